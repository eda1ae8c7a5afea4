"""Operator corrections: a simulated operator's rule, and corrected segments cut into chunks.

The simulated operator stands in for a person at the teleop panel (make demo, the bench). It
watches, every control step, the end-effector motion the policy commands and the one a scripted
expert would command. When their directions disagree (cosine below `disagree_cos`, the expert
moving at least `min_motion`) for `disagree_steps` consecutive steps, it takes over and drives
the expert's actions; it hands back after `takeover_steps` steps, or as soon as the expert
barely moves (nothing left to correct). It never corrects more than `budget_steps` steps of an
episode. Pure: the caller feeds it both actions and executes what it returns.

A corrected segment is the run of consecutive operator steps. `correction_chunks` cuts each
into the policy's chunks: at every decision boundary inside the segment, the observation there
and the next Ta operator actions, normalized as the policy's; a chunk that the segment's end
cuts short counts only its executed actions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .recipe import check_ranges, setting


@dataclass(frozen=True)
class OperatorConfig:
    """The simulated operator's thresholds and budget."""

    disagree_steps: int = setting(4, "n: take over after the policy's commanded motion has "
                                  "disagreed with the expert's for this many consecutive control "
                                  "steps", lo=1, hi=10_000)
    disagree_cos: float = setting(0.0, "the motions disagree when the cosine of their "
                                  "end-effector directions is below this", lo=-1.0, hi=1.0)
    min_motion: float = setting(0.05, "expert motions shorter than this (action units) are not "
                                "judged, and end a takeover", lo=0.0, hi=10.0)
    takeover_steps: int = setting(12, "m: hand back to the policy after this many steps",
                                  lo=1, hi=10_000)
    budget_steps: int = setting(48, "at most this many corrected steps per episode", lo=0,
                                hi=1_000_000)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class SimulatedOperator:
    cfg: OperatorConfig
    disagreeing: int = 0
    held: int = 0                    # steps of the current takeover
    used: int = 0                    # corrected steps this episode
    in_control: bool = False
    segments: int = 0                # takeovers this episode

    def reset(self) -> None:
        self.disagreeing = self.held = self.used = self.segments = 0
        self.in_control = False

    def step(self, policy_action: np.ndarray | None, expert_action: np.ndarray) -> bool:
        """Whether the operator drives this step (then the expert's action runs). While the
        operator is in control the policy proposes nothing (policy_action None)."""
        cfg = self.cfg
        expert_motion = float(np.linalg.norm(expert_action[:3]))
        if self.in_control:
            if self.held >= cfg.takeover_steps or expert_motion < cfg.min_motion or \
                    self.used >= cfg.budget_steps:
                self.in_control, self.disagreeing = False, 0
                return False
            self.held += 1
            self.used += 1
            return True
        if policy_action is None or expert_motion < cfg.min_motion:
            self.disagreeing = 0
            return False
        p = np.asarray(policy_action[:3], float)
        cos = float(p @ expert_action[:3]) / max(float(np.linalg.norm(p)) * expert_motion, 1e-9)
        self.disagreeing = self.disagreeing + 1 if cos < cfg.disagree_cos else 0
        if self.disagreeing >= cfg.disagree_steps and self.used < cfg.budget_steps:
            self.in_control, self.held, self.segments = True, 1, self.segments + 1
            self.used += 1
            return True
        return False


def correction_chunks(steps: list[dict], horizon: int, normalize) -> dict[str, torch.Tensor]:
    """Corrected segments -> chunks. steps: one dict per operator step, in order, {segment: int,
    action: (Da,) robot units, obs: None or (images (Nc, H, W, 3) uint8, state (Ds,)) when the
    step starts a decision boundary}; normalize: robot units -> the policy's normalized
    actions. Returns {op_images, op_states, op_actions (N, Ta, Da), op_executed (N,)} (empty
    tensors when there is no boundary)."""
    out: dict[str, list] = {"op_images": [], "op_states": [], "op_actions": [], "op_executed": []}
    for i, s in enumerate(steps):
        if s.get("obs") is None:
            continue
        seg = [t["action"] for t in steps[i:i + horizon] if t["segment"] == s["segment"]]
        n = len(seg)
        acts = np.stack(seg + [seg[-1]] * (horizon - n))                 # pad: masked out
        out["op_images"].append(torch.as_tensor(s["obs"][0]))
        out["op_states"].append(torch.as_tensor(s["obs"][1]).float())
        out["op_actions"].append(normalize(torch.as_tensor(acts).float()).clamp(-1.0, 1.0))
        out["op_executed"].append(min(n, horizon))
    if not out["op_images"]:
        return {}
    return {"op_images": torch.stack(out["op_images"]),
            "op_states": torch.stack(out["op_states"]),
            "op_actions": torch.stack(out["op_actions"]),
            "op_executed": torch.tensor(out["op_executed"])}


def operator_chunks(frames: list[dict]) -> dict[str, torch.Tensor]:
    """The operator's chunks as policy_node sent them during a takeover (one dict each:
    chunk_index, images, states, actions (Ta, Da) already normalized, executed) -> the
    corrected chunks `correction_chunks` cuts (consecutive chunk indices are one segment; each
    chunk's start is a decision boundary)."""
    steps, segment, last = [], -1, None
    for f in sorted(frames, key=lambda f: f["chunk_index"]):
        if last is None or f["chunk_index"] != last + 1:
            segment += 1
        last = f["chunk_index"]
        acts = np.asarray(f["actions"], np.float32)
        for k in range(int(f["executed"])):
            steps.append({"segment": segment, "action": acts[k],
                          "obs": (f["images"], f["states"]) if k == 0 else None})
    horizon = len(frames[0]["actions"]) if frames else 0
    return correction_chunks(steps, horizon, lambda a: a)
