"""The most recent successful chunks of one task: what the learner's denoising loss imitates.

A chunk of a successful episode is an observation the policy really met and the normalized
action chunk x_0 it executed there (the last state of its recorded chain), with the number of
actions executed (x_0 clipped to [-1, 1], the range of the head's training targets). Only
episodes whose outcome is a success enter; the window keeps the newest
`capacity` chunks, so the learner's memory and time per update stay flat however long it runs.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .model import Observation
from .rollout_store import EpisodeRecord


@dataclass
class SuccessBatch:
    """obs, a0 (N, Ta, Da) normalized executed chunks, executed (N,) actions per chunk."""

    obs: Observation
    a0: torch.Tensor
    executed: torch.Tensor

    def __len__(self) -> int:
        return self.a0.shape[0]

    def to(self, device: torch.device) -> SuccessBatch:
        return SuccessBatch(self.obs.to(device), self.a0.to(device), self.executed.to(device))

    def select(self, idx: torch.Tensor) -> SuccessBatch:
        return SuccessBatch(self.obs.select(idx), self.a0[idx], self.executed[idx])


class SuccessWindow:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a success window holds at least one chunk, got {capacity}")
        self.capacity = capacity
        self.chunks: deque[tuple[torch.Tensor, torch.Tensor, str, torch.Tensor, int]] = \
            deque(maxlen=capacity)
        self.episode_ids: deque[str] = deque(maxlen=capacity)   # never more episodes than chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def add(self, episodes: Iterable[EpisodeRecord]) -> int:
        """Adds the policy's chunks of the successful episodes no operator corrected (each
        episode once); returns how many."""
        added = 0
        seen = set(self.episode_ids)
        for ep in episodes:
            if not ep.success or ep.corrected_steps or ep.num_chunks == 0 or \
                    ep.episode_id in seen:
                continue
            t = ep.tensors
            a0 = t["chains"][:, -1].float().clamp(-1.0, 1.0)     # the head's target range
            for c in range(ep.num_chunks):
                self.chunks.append((t["images"][c], t["states"][c].float(), ep.instruction,
                                    a0[c], int(t["executed"][c])))
                added += 1
            self.episode_ids.append(ep.episode_id)
            seen.add(ep.episode_id)
        return added

    def sample(self, n: int, generator: torch.Generator | None) -> SuccessBatch:
        """n chunks drawn uniformly with replacement."""
        if not self.chunks:
            raise ValueError("the success window is empty")
        rows = torch.randint(len(self.chunks), (n,), generator=generator).tolist()
        picked = [self.chunks[r] for r in rows]
        return SuccessBatch(Observation(torch.stack([p[0] for p in picked]),
                                        torch.stack([p[1] for p in picked]),
                                        [p[2] for p in picked]),
                            torch.stack([p[3] for p in picked]),
                            torch.tensor([p[4] for p in picked]))


class CorrectionWindow(SuccessWindow):
    """The most recent operator-corrected chunks of one task (any outcome): the actions the
    operator executed, cut into the policy's chunks (core/corrections.py)."""

    def add(self, episodes: Iterable[EpisodeRecord]) -> int:
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
