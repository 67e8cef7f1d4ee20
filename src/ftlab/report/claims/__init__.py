"""Does a study reproduce the published findings? One verdict per finding, each comparison with its 95% interval.

    claims = check_claims(study_of("studies/math-ift"))
    claims[0].status, claims[0].sentence, claims[0].counts, claims[0].headline, claims[0].mde

The registry: the findings of "LoRA Learns Less and Forgets Less" (Biderman et al. 2024; claims/paper.py),
those checked in side studies (sweeps, IFT against CPT, long budgets; claims/sweeps.py), those of
"LoRA Without Regret" (Schulman et al. 2025; claims/regret.py) and those on steering forgetting (interpolation,
intruder dimensions, early stops, forgetting at matched learning; claims/steering.py). Every check compares arms (the seeds of
one configuration at one duration) of one setting and one optimizer with paired intervals (ftlab.report.verdicts)
and classifies each comparison as agreeing, disagreeing or inconclusive at 95% (Holm-corrected within the finding;
margin tests outside that family):
    supported        significant agreements and no significant disagreement (an equivalence: every comparison
                     agreeing; an ordering: most of its links)
    contradicted     the reverse
    mixed            both agreements and disagreements
    inconclusive     otherwise
    not enough data  nothing to compare (the sentence says what is missing)
Below three training seeds per arm a verdict rests on evaluation noise only, and its sentence says so.
"""

from __future__ import annotations

from ftlab.report.claims.paper import PAPER_CHECKS
from ftlab.report.claims.regret import REGRET_CHECKS
from ftlab.report.claims.steering import STEERING_CHECKS
from ftlab.report.claims.sweeps import SWEEP_CHECKS
from ftlab.report.verdicts import Claim
from ftlab.results.study import Study

__all__ = ["CHECKS", "Claim", "check_claims"]

CHECKS = PAPER_CHECKS + SWEEP_CHECKS + REGRET_CHECKS + STEERING_CHECKS


def check_claims(study: Study) -> list[Claim]:
    """One Claim per finding: the paper's in its order, then the side studies', LoRA Without Regret's, then those on
    steering forgetting (claims/steering.py: matched learning, interpolation, intruder dimensions, early stops)."""
    return [check(study) for check in CHECKS]
