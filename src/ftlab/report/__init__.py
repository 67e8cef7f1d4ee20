"""The report: what a study shows, read from its results store alone.

    write_report("studies/x")      # -> studies/x/report.html and studies/x/report/ (CSV, JSON)

page.py (the HTML and the exports), claims.py (the paper's findings checked), measures.py (each configuration's
numbers with their intervals), instruments.py (what each instrument can detect), advice.py (the Pareto front and
forgetting budgets), plots*.py (the figures), html.py (tables and CSV).
"""

from ftlab.report.page import write_report

__all__ = ["write_report"]
