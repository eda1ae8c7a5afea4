"""The most recent operator-corrected chunks of one task: what the learner's correction loss
imitates.

A corrected chunk is an observation at a decision boundary of a takeover and the operator's next
actions there, normalized as the policy's and cut to its horizon (core/corrections.py), with the
number of actions the operator executed. Corrections enter whatever the episode's outcome; the
window keeps the newest `capacity` chunks, so the learner's memory and time per update stay flat
however long it runs.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .model import Observation
from .rollout_store import EpisodeRecord


@dataclass
class CorrectionBatch:
    """obs, a0 (N, Ta, Da) the operator's normalized chunks, executed (N,) actions per chunk."""

    obs: Observation
    a0: torch.Tensor
    executed: torch.Tensor

    def __len__(self) -> int:
        return self.a0.shape[0]

    def to(self, device: torch.device) -> CorrectionBatch:
        return CorrectionBatch(self.obs.to(device), self.a0.to(device), self.executed.to(device))

    def select(self, idx: torch.Tensor) -> CorrectionBatch:
        return CorrectionBatch(self.obs.select(idx), self.a0[idx], self.executed[idx])

    def shifted(self, offset: int) -> CorrectionBatch:
        """The chunks as a policy whose executed actions start at chunk index `offset` (To - 1
        observation steps back) is trained on them: the operator's actions moved to start there,
        the indices before it holding the first one, as LeRobot pads an episode's start (they
        enter the noised input, not the loss), and the executed counts cut to what still fits
        the horizon."""
        Ta = self.a0.shape[1]
        a0 = torch.cat([self.a0[:, :1].expand(-1, offset, -1), self.a0[:, :Ta - offset]], 1)
        return CorrectionBatch(self.obs, a0, self.executed.clamp(max=Ta - offset))


class CorrectionWindow:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a correction window holds at least one chunk, got {capacity}")
        self.capacity = capacity
        self.chunks: deque[tuple[torch.Tensor, torch.Tensor, str, torch.Tensor, int]] = \
            deque(maxlen=capacity)
        self.episode_ids: deque[str] = deque(maxlen=capacity)   # never more episodes than chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def add(self, episodes: Iterable[EpisodeRecord]) -> int:
        """Adds the corrected chunks of the episodes (each episode once); returns how many."""
        added = 0
        seen = set(self.episode_ids)
        for ep in episodes:
            t = ep.tensors
            if "op_actions" not in t or ep.episode_id in seen:
                continue
            for c in range(int(t["op_actions"].shape[0])):
                self.chunks.append((t["op_images"][c], t["op_states"][c].float(),
                                    ep.instruction, t["op_actions"][c].float(),
                                    int(t["op_executed"][c])))
                added += 1
            self.episode_ids.append(ep.episode_id)
            seen.add(ep.episode_id)
        return added

    def sample(self, n: int, generator: torch.Generator | None) -> CorrectionBatch:
        """n chunks drawn uniformly with replacement."""
        if not self.chunks:
            raise ValueError("the correction window is empty")
        rows = torch.randint(len(self.chunks), (n,), generator=generator).tolist()
        picked = [self.chunks[r] for r in rows]
        return CorrectionBatch(Observation(torch.stack([p[0] for p in picked]),
                                           torch.stack([p[1] for p in picked]),
                                           [p[2] for p in picked]),
                               torch.stack([p[3] for p in picked]),
                               torch.tensor([p[4] for p in picked]))
