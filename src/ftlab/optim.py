"""Optimizers and learning-rate schedules: AdamW, decoupled LionW; cosine and warmup-stable-cooldown.

The schedule is a pure function of the step, so a resumed run needs only the step to be back on it.
"""

from __future__ import annotations

import math

import torch

from ftlab.config import TrainConfig, cooldown_steps, warmup_steps


class LionW(torch.optim.Optimizer):
    """Lion (Chen et al. 2023) with decoupled weight decay as in llm-foundry's DecoupledLionW (the paper's).

    update = sign(β1·m + (1-β1)·g);  p ← p·(1 - (lr/lr0)·wd) - lr·update;  m ← β2·m + (1-β2)·g
    Weight decay is scaled by the schedule factor lr/lr0, not by lr itself: wd=1e-6 decays 1e-6 per step at peak.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.95), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient, as multi-tensor (foreach) kernels: a few launches per
        group instead of five per tensor, the same arithmetic in the same order."""
        for group in self.param_groups:
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            decay = 1 - (lr / group["initial_lr"]) * wd if wd else 1.0
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            moments = [self.state[p]["exp_avg"] for p in params]
            if decay != 1.0:
                torch._foreach_mul_(params, decay)
            updates = torch._foreach_mul(moments, beta1)
            torch._foreach_add_(updates, grads, alpha=1 - beta1)
            torch._foreach_sign_(updates)
            torch._foreach_add_(params, updates, alpha=-lr)
            torch._foreach_mul_(moments, beta2)
            torch._foreach_add_(moments, grads, alpha=1 - beta2)
        return None


FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # where torch.optim.AdamW(fused=True) runs (torch >= 2.4 for the CPU)


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    for g in groups:
        g["initial_lr"] = g["lr"]  # the peak; the schedule scales it each step
    if cfg.optimizer == "lionw":
        return LionW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # torch's fused AdamW kernel: one per step on CUDA, and on the CPU too (the same update to float rounding)
    fused = all(p.device.type in FUSED_ADAMW_DEVICES for g in groups for p in g["params"]) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak LR at 0-based optimizer step `step` of `total`.

    cosine: linear warmup, then a cosine from the peak to min_lr_ratio. wsd: the product of a linear warmup factor
    and a cooldown factor (flat at 1, then linear to min_lr_ratio over the last `cooldown` share of the steps), so a
    run too short to finish its warmup still cools down to the floor at its end (the paper's 0.25B-token budget is
    318 steps of a 1000-step warmup); when the two do not overlap this is warmup, stable, cooldown.
    """
    warm = warmup_steps(cfg, total)
    warming = min(1.0, (step + 1) / warm) if warm else 1.0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        start = total - cooldown_steps(cfg, total)
        cooling = 1.0 if step < start else 1.0 - (1 - floor) * (step - start + 1) / (total - start)
        return warming * cooling
    if step < warm:
        return warming
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)  # cosine
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
