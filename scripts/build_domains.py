"""Rebuild the shipped source and code domains from this Python's stdlib; print sizes and sha256.

    python scripts/build_domains.py             # writes src/ftlab/domains/data/{source,code}.jsonl.gz
    python scripts/build_domains.py --out DIR   # writes elsewhere (the tests compare against the shipped bytes)

Needs the Python the shipped files were built from (ftlab.domains.build.PYTHON_VERSION): another version's
stdlib has other docstrings and sources, so it refuses rather than write different bytes. Rerunning it on that
Python reproduces the shipped files byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

from ftlab.domains.build import build

SHIPPED = Path(__file__).resolve().parents[1] / "src/ftlab/domains/data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(SHIPPED), help="directory to write into (default: the package's data/)")
    args = parser.parse_args()
    for name, data in build(args.out).items():
        rows = [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]
        chars = sum(len(r.get("text", r.get("source", ""))) for r in rows)
        print(f"{name}: {len(data):,} bytes gzipped, {len(rows):,} records, {chars:,} characters of text, "
              f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
