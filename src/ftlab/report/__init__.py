"""The report: what a study shows, read from its results store alone.

    write_report("studies/x")      # -> studies/x/report.html and studies/x/report/ (CSV, JSON)

    select.py       every rule choosing what is compared: plain full FT and LoRA, best LRs, sweeps, arms, durations
    verdicts.py     paired comparisons of arms on an instrument -> a verdict; the Claim a finding decides
    claims/         the findings checked: the paper's (paper.py), its side studies' (sweeps.py), LoRA Without
                    Regret's (regret.py), steering forgetting (steering.py); the registry in claims/__init__.py
    measures.py     each configuration's numbers with their 95% intervals, what it cost, and what each instrument
                    can detect (Power)
    advice.py       the learning-forgetting Pareto front and forgetting budgets; the answer first (summarize: per
                    setting the budgets' picks, LoRA against full FT, cost, caveats)
    figures.py      the figures, in page order
    page.py         the HTML page and every export (CSV, JSON)
"""

from ftlab.report.page import write_report

__all__ = ["write_report"]
