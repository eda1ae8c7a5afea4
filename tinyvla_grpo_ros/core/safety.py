"""Action limits applied before anything reaches the arm: per-dimension clamps and a maximum
change per control step (for joint-position actions the first step is measured from the current
joint positions)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ActionLimits:
    low: np.ndarray                  # (Da,)
    high: np.ndarray                 # (Da,)
    max_delta: float = 0.0           # 0 = off

    def __post_init__(self) -> None:
        self.low, self.high = np.asarray(self.low, float), np.asarray(self.high, float)
        if self.low.shape != self.high.shape or np.any(self.low > self.high):
            raise ValueError(f"action limits need low <= high of equal length, got {self.low} "
                             f"and {self.high}")

    def apply(self, actions: np.ndarray, state: np.ndarray | None = None,
              action_names: list[str] | None = None, joint_names: list[str] | None = None
              ) -> np.ndarray:
        """actions (Ta, Da) -> clamped copy; non-finite values become the previous action."""
        if actions.shape[-1] != self.low.shape[0]:
            raise ValueError(f"actions have {actions.shape[-1]} dims, limits {self.low.shape[0]}")
        out = np.array(actions, dtype=np.float64)
        prev = None
        if state is not None and action_names and joint_names and \
                set(action_names) <= set(joint_names):
            pos = dict(zip(joint_names, state))
            prev = np.array([pos[n] for n in action_names])
        for t in range(out.shape[0]):
            a = out[t]
            bad = ~np.isfinite(a)
            if bad.any():
                a[bad] = prev[bad] if prev is not None else 0.0
            a = np.clip(a, self.low, self.high)
            if self.max_delta > 0 and prev is not None:
                a = np.clip(a, prev - self.max_delta, prev + self.max_delta)
            out[t] = a
            prev = a
        return out
