"""Observation history: the To observation steps a decision conditions on (n_obs_steps).

A policy with To > 1 (LeRobot's n_obs_steps) sees the frames and joint states of the current
control step and of the To - 1 steps before it, one control period `dt` apart, oldest first.
Each input stream (a camera, the joint states) keeps its own `StampedHistory` for the episode
(restarted at the episode's start from the newest reading, the scene after its reset);
the reading that stands for step k (k = 0 the current, k = To - 1 the oldest) is the one stamped
nearest to t_0 - k dt, where t_0 is the stamp of the stream's current reading (a jittered camera
at the control rate gives each step its own frame). A step before the episode's first reading
repeats that reading, as LeRobot fills its queues at reset. A reading further than `max_gap_s`
from the step it stands for is a problem (a camera too slow, or a driver that published only at
decision points), named, not silently used.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


class StampedHistory:
    """One input stream's readings in an episode, by stamp; keeps what `at` can still need."""

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s                   # how far back of the newest reading `at` looks
        self.items: deque[tuple[float, Any]] = deque()

    def restart(self) -> None:
        """An episode starts from the current inputs: keep only the newest reading."""
        while len(self.items) > 1:
            self.items.popleft()

    def add(self, stamp: float, value: Any) -> None:
        """A reading; one stamped before the newest is ignored (out of order)."""
        if self.items and stamp < self.items[-1][0]:
            return
        self.items.append((stamp, value))
        # keep the newest reading at or before newest - span: `at` may still pick it
        while len(self.items) > 1 and self.items[1][0] <= stamp - self.span_s:
            self.items.popleft()

    def at(self, t: float) -> tuple[float, Any, bool]:
        """(stamp, value, padded): the reading stamped nearest to t (the older one on a tie),
        or, when t lies before the first reading (the episode began after t), the first one
        with padded = True."""
        if not self.items:
            raise LookupError("no reading yet")
        if t < self.items[0][0]:
            return (*self.items[0], True)
        stamp, value = min(reversed(self.items), key=lambda item: abs(item[0] - t))
        return stamp, value, False

    def __len__(self) -> int:
        return len(self.items)


def history_steps(history: StampedHistory, n_steps: int, dt: float, max_gap_s: float,
                  what: str) -> list[Any] | str:
    """The values standing for the To = n_steps control steps ending at the newest reading,
    oldest first, or why they cannot be had (a gap over max_gap_s, named with `what`)."""
    if not len(history):
        return f"no reading yet on {what}"
    t0 = history.items[-1][0]
    out = []
    for k in range(n_steps - 1, -1, -1):
        target = t0 - k * dt
        stamp, value, padded = history.at(target)
        if not padded and abs(target - stamp) > max_gap_s:
            return (f"{what} has no reading within {max_gap_s:.3f} s of the observation step "
                    f"{k} control periods back (the nearest is {abs(target - stamp):.3f} s "
                    f"away); a policy with n_obs_steps {n_steps} needs one every control "
                    f"period ({dt * 1e3:.1f} ms)")
        out.append(value)
    return out


def stack_steps(frames: list[np.ndarray], states: list[np.ndarray]) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Per step (Nc, H, W, 3) frames and (Ds,) states, oldest first -> the policy's
    (To * Nc, H, W, 3) images and (To * Ds,) state (time-major)."""
    return np.concatenate(frames, 0), np.concatenate(states, 0)
