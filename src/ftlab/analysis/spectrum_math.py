"""The numbers of one matrix's spectrum: singular values (two exact-in-k ways), k50/k90/k99, stable and effective
rank, intruder dimensions, and the Gaussian baseline of a shape.

Definitions (PAPER.md, finding 5; σ descending, m x n matrix):
    k_q            smallest k with  sum_{i<=k} σi² >= q · sum_i σi²   (q = 0.5, 0.9, 0.99; 0 for a zero matrix)
    k90_frac       k90 / min(m, n)
    stable_rank    ||W||_F² / σ_max²
    effective_rank exp(H(p)), p_i = σ_i / sum_j σ_j                          (Roy & Vetterli 2007)
    intruders      among the top_k left singular vectors of W_ft, those whose max |cos| with every left singular
                   vector of W_base is below ε (exactly PEFT's reduce_intruder_dimension, which uses W + ΔW)

Singular values come from `torch.linalg.svdvals` in fp32 ("svd") or from the eigenvalues of the Gram matrix of the
smaller side in float64 ("gram"): σ² = eig(W Wᵀ). The Gram path squares the condition number, but in float64 from
fp32 inputs σ_i² keeps ~1e-16·σ_max² absolute accuracy, far below what moves a cumulative share of σ², so the k
values agree with svdvals (tests/test_spectrum.py checks this on ill-conditioned and rank-deficient matrices; only
a share within fp32 rounding, ~1e-6, of 0.5/0.9/0.99 could tip either way, and there svdvals is the less exact).
Measured on a 2-core CPU (BENCHMARKS.md), gram is 6-35x faster at 2048x2048, 2048x5632 and 5632x2048 (svdvals'
bidiagonalisation is memory-bound; the Gram matrix is one matmul and a small symmetric eigenproblem), so "auto"
picks it. On a GPU it is unmeasured (no GPU was lent); "auto" picks gram there too, --method svd is the fallback.
"""

from __future__ import annotations

import math

import torch

QUANTILES = {"k50": 0.5, "k90": 0.9, "k99": 0.99}
METHODS = ("svd", "gram")
GAUSSIAN_SEED = 0


def resolve_method(method: str) -> str:
    """"auto" -> "gram": exact in k (tested) and the faster of the two where measured (CPU)."""
    if method == "auto":
        return "gram"
    if method not in METHODS:
        raise ValueError(f"method must be auto, svd or gram, not {method!r}")
    return method


@torch.no_grad()
def singular_values(w: torch.Tensor, method: str = "gram") -> torch.Tensor:
    """All min(m, n) singular values of w (m, n), descending, float64, on w's device."""
    if method == "svd":
        return torch.linalg.svdvals(w.float()).double()
    x = w.double()
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x  # (s, s), s = min(m, n)
    eig = torch.linalg.eigvalsh(gram)  # ascending; tiny negatives are rounding of zeros
    return eig.flip(0).clamp_min(0).sqrt()


def k_values(sigma: torch.Tensor) -> dict[str, int]:
    """{"k50", "k90", "k99"}: the smallest k whose leading σ² reach that share of the total σ²."""
    energy = sigma.double().square().cumsum(0)  # (s,)
    total = float(energy[-1]) if len(energy) else 0.0
    if total == 0.0:
        return {key: 0 for key in QUANTILES}
    targets = torch.tensor([q * total for q in QUANTILES.values()], dtype=energy.dtype, device=energy.device)
    ks = torch.searchsorted(energy, targets).clamp_max(len(energy) - 1) + 1  # first index with energy >= target
    return dict(zip(QUANTILES, (int(k) for k in ks)))


def matrix_stats(sigma: torch.Tensor, fro: float | None = None) -> dict[str, float | int]:
    """k50/k90/k99, k90_frac, stable_rank, effective_rank and fro of one matrix from its singular values.

    fro is ||W||_F measured on the matrix itself (default: sqrt(sum σ²)); a zero matrix gives all zeros.
    """
    sigma = sigma.double()
    fro = math.sqrt(float(sigma.square().sum())) if fro is None else float(fro)
    top = float(sigma[0]) if len(sigma) else 0.0
    total = float(sigma.sum())
    if total > 0:
        p = sigma[sigma > 0] / total
        effective = math.exp(float(-(p * p.log()).sum()))
    else:
        effective = 0.0
    k = k_values(sigma)
    return {**k, "k90_frac": k["k90"] / max(len(sigma), 1), "stable_rank": fro ** 2 / top ** 2 if top > 0 else 0.0,
            "effective_rank": effective, "fro": fro}


def frobenius(w: torch.Tensor) -> float:
    """||w||_F accumulated in float64."""
    return float(torch.linalg.vector_norm(w, dtype=torch.float64))


@torch.no_grad()
def left_factors(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left singular vectors (m, s), singular values (s,) in float64) of w (m, n) by an fp32 SVD, as PEFT's
    intruder count takes them."""
    u, s, _ = torch.linalg.svd(w.float(), full_matrices=False)  # (m, s), (s,)
    return u, s.double()


@torch.no_grad()
def intruders(u_base: torch.Tensor, u_ft: torch.Tensor, top_k: int, epsilon: float) -> int:
    """PEFT's intruder dimensions: the top-k left singular vectors of W_ft whose max_j |<u_ft_i, u_base_j>| is below
    epsilon (left_factors of W_base and of W_ft = W_base + ΔW)."""
    cos = (u_ft[:, :top_k].T @ u_base).abs().max(dim=1).values  # (top_k,)
    return int((cos < epsilon).sum())


_GAUSSIAN: dict[tuple[int, int, str, str], dict] = {}


def gaussian_stats(shape: tuple[int, int], method: str, device: torch.device | str = "cpu") -> dict:
    """matrix_stats of an i.i.d. N(0, 1) matrix of this shape (seed 0), computed once per shape and cached."""
    device = torch.device(device)
    key = (shape[0], shape[1], method, device.type)
    if key not in _GAUSSIAN:
        g = torch.randn(shape, generator=torch.Generator().manual_seed(GAUSSIAN_SEED)).to(device)  # (m, n)
        _GAUSSIAN[key] = matrix_stats(singular_values(g, method), frobenius(g))
    return dict(_GAUSSIAN[key])
