"""What stands between the policy and the arm: action limits and the command watchdog.

ActionLimits: per-dimension clamps and a maximum change per control step. The change is measured
from the action in force before the chunk: the current joint positions when actions are joint
positions, else the last command sent (rest = zeros at the start of an episode, for rate or
end-effector-delta actions). Non-finite values never reach the arm. A joint reading outside the
limits stops commands (`reading_problem`); a hold goes to `hold_target`: the last command, else
the last good reading, never a raw reading.

Watchdog: while an episode runs, a fresh command must go out every `timeout_s`; when none has,
`expired()` says so once per lapse, and the node holds the arm.

A software limit is not a safety system: the hardware e-stop stays the last word (README).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ActionLimits:
    low: np.ndarray                  # (Da,)
    high: np.ndarray                 # (Da,)
    max_delta: float = 0.0           # per control step; 0 = off

    def __post_init__(self) -> None:
        self.low, self.high = np.asarray(self.low, float), np.asarray(self.high, float)
        if self.low.shape != self.high.shape or np.any(self.low > self.high):
            raise ValueError(f"action limits need low <= high of equal length, got {self.low} "
                             f"and {self.high}")
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError("action limits must be finite")
        if self.max_delta < 0:
            raise ValueError(f"max_delta must be >= 0, got {self.max_delta}")

    def apply(self, actions: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
        """actions (Ta, Da) -> limited copy. prev (Da,): the action in force before the chunk
        (None: no rate limit on the first step). A non-finite value is replaced by the previous
        action's (or the clamp of 0 when there is none)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[-1] != self.low.shape[0]:
            raise ValueError(f"actions must be (Ta, {self.low.shape[0]}), got {actions.shape}")
        out = actions.copy()
        prev = None if prev is None else np.clip(np.asarray(prev, float), self.low, self.high)
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

    def reading_problem(self, action_names: list[str], joint_names: list[str],
                        state: np.ndarray) -> str:
        """For joint-position actions: "" when every commanded joint reads inside its limits,
        else which one does not (a reading of 1e6, or degrees for radians, must not become the
        start of a command or of a hold)."""
        if not set(action_names) <= set(joint_names):
            return ""
        pos = dict(zip(joint_names, state))
        out = [f"{n} reads {pos[n]:.4g} outside [{lo:.4g}, {hi:.4g}]"
               for n, lo, hi in zip(action_names, self.low, self.high)
               if not lo <= pos[n] <= hi]
        return ("joint reading outside the action limits: " + ", ".join(out)) if out else ""

    def hold_target(self, last_command: np.ndarray | None, last_good: np.ndarray | None
                    ) -> np.ndarray | None:
        """Where a hold keeps the arm: the last command sent (finite, inside the limits and
        within max_delta of the one before), else the last good reading (inside the limits);
        None when neither is known. Never the raw current reading, which may be NaN, far out of
        range or stale."""
        for cand in (last_command, last_good):
            if cand is None:
                continue
            c = np.asarray(cand, float)
            if c.shape == self.low.shape and np.all(np.isfinite(c)):
                return np.clip(c, self.low, self.high)
        return None

    @staticmethod
    def previous(action_names: list[str], joint_names: list[str], state: np.ndarray,
                 last_command: np.ndarray | None) -> np.ndarray:
        """The action in force before a chunk: joint positions for joint-position actions,
        else the last command (zeros = rest when there is none yet)."""
        if set(action_names) <= set(joint_names):
            pos = dict(zip(joint_names, state))
            return np.array([pos[n] for n in action_names], float)
        if last_command is not None:
            return np.asarray(last_command, float)
        return np.zeros(len(action_names))


class Watchdog:
    """Fires once when no command was fed for `timeout_s` while armed (0 = never)."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s < 0:
            raise ValueError(f"watchdog timeout must be >= 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.last: float | None = None
        self.fired = False
        self.fired_count = 0

    def arm(self, now: float) -> None:
        """Start counting (an episode starts running, the node is enabled again)."""
        self.last, self.fired = now, False

    def disarm(self) -> None:
        self.last, self.fired = None, False

    def feed(self, now: float) -> None:
        """A fresh command went out."""
        if self.last is not None:
            self.last, self.fired = now, False

    def expired(self, now: float) -> float | None:
        """Seconds since the last command, once per lapse; None while all is well."""
        if self.timeout_s == 0 or self.last is None or self.fired:
            return None
        age = now - self.last
        if age <= self.timeout_s:
            return None
        self.fired = True
        self.fired_count += 1
        return age
