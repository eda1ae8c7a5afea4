"""Synthetic observations and rollout groups from a live policy: for the learner's tests and
its benchmark (bench/bench_learner.py), where no simulator is needed.

Each group's G episodes are one chunk each, sampled from random observations; rewards
alternate 0, 1 so that every group carries signal.
"""
from __future__ import annotations

import torch

from .adapters import AdaptedPolicy
from .config import ModelConfig
from .model import Observation
from .rollout_store import EpisodeRecord, episode_record
from .sampler import DiffusionSampler


def random_obs(cfg: ModelConfig, B: int = 3, seed: int = 0) -> Observation:
    """B random observations of the model's shape (uint8 images, Gaussian states; To steps)."""
    g, To = torch.Generator().manual_seed(seed), cfg.n_obs_steps
    return Observation(
        torch.randint(0, 256, (B, To * cfg.num_cameras, cfg.image_size, cfg.image_size, 3),
                      generator=g, dtype=torch.uint8),
        torch.randn((B, To * cfg.state_dim), generator=g),
        ["pick the red block", "push", "open the drawer ✓"][:B] + ["x"] * max(0, B - 3))


def synthetic_groups(policy: AdaptedPolicy, sampler: DiffusionSampler, n_groups: int = 2,
                     G: int = 4, seed: int = 0, version: int = 0, task: str = "pick"
                     ) -> list[list[EpisodeRecord]]:
    """`n_groups` groups of G one-chunk episodes of `task` at adapter `version`."""
    cfg = policy.model.config
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for g in range(n_groups):
        obs = random_obs(cfg, B=G, seed=seed + g)
        chunk = sampler.sample(policy.model, obs, generator=gen)
        groups.append([episode_record(
            [{"images": obs.images[j], "states": obs.state[j], "chains": chunk.chain[j],
              "log_probs": chunk.log_probs[j], "executed": chunk.executed_steps}],
            success=bool(j % 2), episode_id=f"g{g}e{j}", group_id=f"g{g}", task=task,
            init_state_id=g, adapter_name=task, adapter_version=version,
            instruction=obs.instruction[j]) for j in range(G)])
    return groups
