"""The report: what a study shows, read from its results store alone.

    write_report("studies/x")      # -> studies/x/report.html and studies/x/report/ (CSV, JSON)

page.py (the HTML and the exports), claims.py (the paper's findings checked), plots*.py (the figures).
"""

from ftlab.report.page import write_report

__all__ = ["write_report"]
