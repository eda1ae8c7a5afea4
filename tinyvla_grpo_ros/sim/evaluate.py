"""Deterministic success of every stored adapter version on held-out init states, in the fast
lock-step runner (`sim.rollout.run_lockstep`): what `make demo` reports with 95% intervals.

Every version meets the same x_K in the same state at the same decision (`noise_key`), so the
difference between two versions is paired state by state.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..core.adapters import (
    AdaptedPolicy,
    AdapterConfig,
    list_versions,
    read_adapter_version,
    version_dir,
)
from ..core.checkpoint import load_checkpoint
from ..core.sampler import DiffusionSampler
from .metaworld_scene import MetaWorldScene
from .rollout import run_lockstep


def evaluate_versions(checkpoint: Path, adapter_root: Path, task: str,
                      adapter_cfg: AdapterConfig, state_ids: list[int],
                      sampler_overrides: dict | None = None, noise_key: int = 0,
                      scenes_at_once: int = 30, goal_marker_radius: float = 0.04,
                      max_steps: int = 150, log=print) -> dict[int, list[bool]]:
    """{version: success per state} for every complete version of `task` under adapter_root."""
    model, scfg, _ = load_checkpoint(checkpoint)
    scfg = dataclasses.replace(scfg, **(sampler_overrides or {}))
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)
    policy = AdaptedPolicy(model, adapter_cfg, [task])
    scenes = [MetaWorldScene(task, image_size=model.config.image_size, max_steps=max_steps,
                             goal_marker_radius=goal_marker_radius)
              for _ in range(min(scenes_at_once, len(state_ids)))]
    out: dict[int, list[bool]] = {}
    try:
        for v in list_versions(adapter_root, task):
            state, meta = read_adapter_version(version_dir(adapter_root, task, v), adapter_root)
            policy.load_adapter_state(state, task, preset=meta.get("preset"))
            wins: list[bool] = []
            for k in range(0, len(state_ids), len(scenes)):
                part = state_ids[k:k + len(scenes)]
                wins += [e.success for e in run_lockstep(scenes, policy.model, sampler, part,
                                                         True, torch.Generator(),
                                                         noise_key=noise_key)]
            out[v] = wins
            log(f"  v{v:04d}: {np.mean(wins):.2f} deterministic success on {len(wins)} "
                "held-out states")
    finally:
        for s in scenes:
            s.close()
    return out
