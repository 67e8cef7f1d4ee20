#!/usr/bin/env python3
"""Open an ftlab report in headless Chromium and check that it reads: every image decodes, every section is
there, the first screen (900 px of a 1,400-px window) holds the answer, nothing scrolls sideways (the page or a
table), and a figure's small text (legends) shows at least 10 px tall.

    python scripts/check_report.py studies/x/report.html
    python scripts/check_report.py studies/x/report.html --screenshot /tmp/report.png

The report has no script of its own. This copies it into a temporary page with one script added that waits for
the load event, looks at every <img> (loaded, natural size, shown width), which sections exist and the page's
scroll width, and writes that as JSON into a <pre id="ftlab-check">; Chromium's --dump-dom prints the page after
that, and this script reads the JSON back. A run that yields no result (Chromium failed to start) is tried once
more.

Needs Chromium (Debian: `apt-get install -y chromium`); `--chromium PATH` or $CHROMIUM picks another binary.
Exit status: 0 all checks passed; 1 a check failed (each failure printed); 2 no Chromium, no report, or Chromium
did not produce a result.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SECTIONS = ("summary", "claims", "instruments", "recommendation", "cost", "steering", "figures", "runs",
            "missing", "glossary")  # ids ftlab.report writes (ftlab.report.page.SECTIONS; a test keeps the two equal)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

PROBE = """<script>
window.addEventListener("load", function () {
  // Synchronous on purpose: after "load" every <img> has loaded or failed, and naturalWidth says which; an
  // asynchronous check (img.decode()) can finish after Chromium has already dumped the page.
  var imgs = Array.prototype.slice.call(document.images);
  var out = {
    images: imgs.map(function (img) {
      var fig = img.closest("figure");
      return {figure: fig ? fig.id : "", decoded: img.complete && img.naturalWidth > 0, width: img.naturalWidth,
              height: img.naturalHeight, shown_width: img.getBoundingClientRect().width,
              small_px: parseFloat(img.getAttribute("data-small-px") || "0")};
    }),
    wide_tables: Array.prototype.filter.call(document.querySelectorAll(".scroll"), function (box) {
      return box.scrollWidth > box.clientWidth + 1;
    }).map(function (box) { var t = box.querySelector("table"); return t && t.className ? t.className : "table"; }),
    answer: (function () {
      var a = document.getElementById("answer");
      var first = a && a.querySelector("li");
      return a ? {top: a.getBoundingClientRect().top + window.scrollY,
                  first_bottom: first ? first.getBoundingClientRect().bottom + window.scrollY : null} : null;
    })(),
    sections: %s.filter(function (id) { return document.getElementById(id) !== null; }),
    figures: Array.prototype.map.call(document.querySelectorAll("figure[id]"), function (f) { return f.id; }),
    scroll_width: document.documentElement.scrollWidth,
    window_width: window.innerWidth
  };
  var pre = document.createElement("pre");
  pre.id = "ftlab-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def find_chromium(explicit: str | None) -> str | None:
    for name in ([explicit] if explicit else []) + [os.environ.get("CHROMIUM", "")] + list(BROWSERS):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _chromium(binary: str, profile: str, width: int, height: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
           "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


WIDTH, FIRST_SCREEN, SMALL_PX = 1400, 900, 10  # the window (px), the first screen's height, small text's least px


def probe(report: Path, binary: str, width: int = WIDTH) -> dict:
    """Load the report (plus the probe script) in headless Chromium; returns the probe's JSON."""
    page = report.read_text(encoding="utf-8")
    script = PROBE % json.dumps(list(SECTIONS))
    wrapped = page.replace("</body>", script + "</body>", 1) if "</body>" in page else page + script
    with tempfile.TemporaryDirectory(prefix="ftlab-check-") as tmp:
        wrapper = Path(tmp) / "report.html"
        wrapper.write_text(wrapped, encoding="utf-8")
        for attempt in range(2):
            done = _chromium(binary, str(Path(tmp) / f"profile{attempt}"), width, 900, "--virtual-time-budget=15000",
                             "--dump-dom", wrapper.as_uri())
            found = re.search(r'<pre id="ftlab-check">(.*?)</pre>', done.stdout, re.S)
            if found:
                break
    if not found:
        noise = ("dbus", "DBus")  # headless Chromium without a session bus logs these on every start
        errors = "\n".join(line for line in done.stderr.splitlines() if not any(n in line for n in noise))
        raise RuntimeError(f"Chromium produced no probe result (exit {done.returncode}); stderr tail:\n"
                           + errors[-2000:])
    return json.loads(html.unescape(found.group(1)))


def failures(result: dict, width: int = WIDTH) -> list[str]:
    """What is wrong with a probed page; empty when every check passes."""
    bad = [f"section #{s} is missing" for s in SECTIONS if s not in result["sections"]]
    if not result["images"]:
        bad.append("the page has no image")
    for i, img in enumerate(result["images"]):
        where = img["figure"] or f"image {i + 1}"
        if not img["decoded"] or img["width"] <= 0 or img["height"] <= 0:
            bad.append(f"{where}: the image did not decode")
        elif img["shown_width"] > width:
            bad.append(f"{where}: shown {img['shown_width']:.0f} px wide, wider than the {width}-px window")
        elif img["small_px"] and img["small_px"] * img["shown_width"] / img["width"] < SMALL_PX:
            bad.append(f"{where}: its legends show {img['small_px'] * img['shown_width'] / img['width']:.1f} px "
                       f"tall, under {SMALL_PX} px")
    bad += [f"a table ({cls}) scrolls sideways" for cls in result.get("wide_tables", [])]
    answer = result.get("answer")
    if answer is None:
        bad.append("the answer (#answer) is missing")
    elif answer["first_bottom"] is None or answer["first_bottom"] > FIRST_SCREEN:
        bad.append(f"the first {FIRST_SCREEN} px do not hold the answer (its first line ends at "
                   f"{answer['first_bottom']} px)")
    figures_with_images = {img["figure"] for img in result["images"]}
    bad += [f"{f}: a figure without an image" for f in result["figures"] if f not in figures_with_images]
    if result["scroll_width"] > result["window_width"] + 1:
        bad.append(f"the page is {result['scroll_width']} px wide in a {result['window_width']}-px window "
                   "(horizontal scrolling)")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.html written by `ftlab report`")
    parser.add_argument("--chromium", help="Chromium binary (default: $CHROMIUM, then chromium on PATH)")
    parser.add_argument("--width", type=int, default=WIDTH, help=f"window width in px (default {WIDTH})")
    parser.add_argument("--screenshot", type=Path, help="also save a full-width screenshot here (PNG)")
    parser.add_argument("--first-screen", type=Path, help=f"also save the first {FIRST_SCREEN} px here (PNG)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"check_report: {args.report}: no such file", file=sys.stderr)
        return 2
    binary = find_chromium(args.chromium)
    if binary is None:
        print("check_report: no Chromium found (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    try:
        result = probe(args.report.resolve(), binary, args.width)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"check_report: {e}", file=sys.stderr)
        return 2
    if args.screenshot:
        with tempfile.TemporaryDirectory(prefix="ftlab-shot-") as tmp:
            _chromium(binary, tmp, args.width, 2400, f"--screenshot={args.screenshot.resolve()}",
                      args.report.resolve().as_uri())
    if args.first_screen:
        with tempfile.TemporaryDirectory(prefix="ftlab-shot-") as tmp:
            _chromium(binary, tmp, args.width, FIRST_SCREEN, f"--screenshot={args.first_screen.resolve()}",
                      args.report.resolve().as_uri())
    bad = failures(result, args.width)
    for line in bad:
        print(f"check_report: FAIL {line}")
    print(f"check_report: {len(result['images'])} images, sections {', '.join(result['sections'])}, "
          f"page {result['scroll_width']} px in a {result['window_width']}-px window: "
          + ("FAILED" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
