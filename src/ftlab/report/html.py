"""What every part of the report page shares: escaping, numbers, tables and CSV text."""

from __future__ import annotations

import csv
import html
import io
import math


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def num(x: object) -> str:
    """A number as the page shows it: 4 significant digits, "–" for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def table(head: list[str], rows: list[list[str]], cls: str = "", numeric: frozenset[int] = frozenset(),
          ids: list[str] | None = None) -> str:
    """An HTML table in a horizontally scrolling box; cells are HTML already (escape them first), columns whose
    index is in `numeric` right-aligned; ids: each row's id attribute."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join((f'<tr id="{esc(ids[n])}">' if ids else "<tr>")
                   + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
                   + "</tr>" for n, row in enumerate(rows))
    klass = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{klass}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def csv_text(records: list[dict], columns: tuple[str, ...] | None = None) -> str:
    """CSV of records (columns default: the union of their keys, in order of first appearance); None -> empty."""
    if columns is None:
        columns = tuple(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in records])
    return buf.getvalue()
