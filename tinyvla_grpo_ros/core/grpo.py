"""GRPO for diffusion policies: group-relative advantages and the clipped per-step surrogate.

Notation: G rollouts of one group (same initial state), rewards r_i; N chunks in a batch,
K' fine-tuned denoising steps; logp (N, K') per-step log-densities (sampler.py).

    r_i = 1 for a success, 0 for a failure or a corrected episode (outcome_reward)
    A_i = (r_i - mean(r)) / (std(r) + eps)                      (Shao et al. 2024, GRPO)
    rho_{n,k} = exp(logp_new - logp_old)
    L = - sum_{n,k} w_k * min(rho A_n, clip(rho, 1 - eps_low, 1 + eps_high) A_n) / Z
        + beta * sum_{n,k} w_k * KL_k3(n,k) / Z  (Schulman's k3: e^d - d - 1, d = ref - new)
    w_k = gamma^(K'-1-k): denoising discount (DPPO), the last step (k = K'-1) weighs 1.
Every chunk weighs the same (DAPO's token-level mean). Z = N * sum_k w_k over the *whole* batch,
passed in, so that micro-batches add up to the same gradient as one batch. Pure functions:
backward, optimizer and logging belong to the caller.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GRPOLossConfig:
    clip_low: float = 0.2           # eps_low (PPO: 0.2)
    clip_high: float = 0.28         # eps_high > eps_low (DAPO's clip-higher: 0.28)
    denoise_discount: float = 1.0   # gamma over the denoising chain (DPPO: 0.99); 1 = off
    kl_coef: float = 0.0            # beta; 0 = no KL term (no reference forward)

    def __post_init__(self) -> None:
        if not (0 < self.clip_low < 1 and self.clip_high > 0):
            raise ValueError(f"clip_low must lie in (0, 1) and clip_high > 0, got "
                             f"{self.clip_low}, {self.clip_high}")
        if not 0 < self.denoise_discount <= 1:
            raise ValueError(f"denoise_discount must lie in (0, 1], got {self.denoise_discount}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


def outcome_reward(success: bool, corrected_steps: int = 0) -> float:
    """An episode's reward: the outcome alone (the simulator's success, the operator's mark).
    An episode the operator had to correct is a failure of the policy, whatever its outcome:
    the policy's chunks before the takeover led where a person had to step in."""
    return 1.0 if success and not corrected_steps else 0.0


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor | None:
    """rewards (G,) -> advantages (G,); None when the group has no signal (zero variance)."""
    if rewards.numel() < 2:
        raise ValueError(f"GRPO needs group_size >= 2, got {rewards.numel()}")
    r = rewards.double()
    if torch.all(r == r[0]):
        return None
    return ((r - r.mean()) / (r.std(unbiased=False) + eps)).float()


def step_weights(k_prime: int, gamma: float) -> torch.Tensor:
    """(K',) denoising-discount weights; the final step weighs 1."""
    return gamma ** torch.arange(k_prime - 1, -1, -1, dtype=torch.float32)


def grpo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
              cfg: GRPOLossConfig, normalizer: float, logp_ref: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate per denoising step. logp_* (N, K'), advantages (N,).

    Returns (loss, stats) where loss is this batch's share of the whole-batch mean (divided by
    `normalizer`, the whole batch's weight sum) and stats are sums over this batch's N*K' terms.
    """
    N, Kp = logp_new.shape
    w = step_weights(Kp, cfg.denoise_discount).to(logp_new.device).expand(N, Kp)   # (N, K')
    # 1. importance ratio per step
    log_ratio = logp_new - logp_old
    ratio = log_ratio.exp()
    # 2. clipped surrogate (asymmetric clip)
    A = advantages[:, None]
    surr = torch.minimum(ratio * A, ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * A)
    loss = -(w * surr).sum() / normalizer
    # 3. optional KL to the reference policy (k3 estimator, always >= 0)
    kl = torch.zeros((), device=logp_new.device)
    if logp_ref is not None and cfg.kl_coef > 0:
        d = logp_ref - logp_new
        kl = (w * (d.exp() - d - 1)).sum()
        loss = loss + cfg.kl_coef * kl / normalizer
    with torch.no_grad():
        clipped = ((ratio < 1 - cfg.clip_low) & (A < 0)) | ((ratio > 1 + cfg.clip_high) & (A > 0))
        stats = {
            "clip_count": clipped.float().sum(),
            "approx_kl_sum": ((ratio - 1) - log_ratio).sum(),      # Schulman's k3 of old || new
            "ref_kl_sum": kl.detach(),
            "terms": torch.tensor(float(N * Kp)),
            "ratio_min": ratio.min(), "ratio_max": ratio.max(),
        }
    return loss, stats
