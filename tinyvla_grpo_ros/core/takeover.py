"""The operator's takeover of the arm (policy_node's side, no ROS): who is in control, and
whether the operator's latest command may be sent.

While the intervene control is held (panel button, Joy dead-man button, `intervene` service),
policy_node samples nothing and sends the operator's commands instead, through its own limits,
watchdog, enable and e-stop. A takeover is refused when no episode runs. During one, a command
that is not finite or lies outside the action limits is refused by name (and nothing moves), and
a silent or stale operator topic holds the arm. Releasing hands control back to the policy at
its next decision.

Commands come in the policy's action space (`operator_action`), or from the built-in mappings
of common teleop sources: `joy_action` (sensor_msgs/Joy axes, per action dimension an axis index
and a scale) and `twist_action` (geometry_msgs/TwistStamped linear velocity onto end-effector
delta actions named ee_dx, ee_dy, ee_dz, scaled to action units per control step).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .recipe import check_ranges, setting

EE_DELTA_NAMES = ("ee_dx", "ee_dy", "ee_dz")


@dataclass(frozen=True)
class TakeoverConfig:
    """How policy_node takes the operator's commands (its parameters; topics operator_action,
    joy, operator_twist; service intervene)."""

    operator_stale_s: float = setting(0.5, "during a takeover, hold the arm when the operator's "
                                      "latest command is older than this", lo=0.01, hi=60.0)
    joy_intervene_button: int = setting(-1, "Joy button held as the dead-man switch of a "
                                        "takeover (-1: Joy does not take over)", lo=-1, hi=127)
    joy_axes: tuple[int, ...] = setting((-1,), "per action dimension, the Joy axis that drives "
                                        "it (-1: none; one -1: Joy commands nothing)")
    joy_scales: tuple[float, ...] = setting((1.0,), "per action dimension, the factor from its "
                                            "Joy axis to action units (one value: all)")
    twist_scale: float = setting(0.0, "TwistStamped on operator_twist: action units per m/s of "
                                 "end-effector velocity, onto actions ee_dx, ee_dy, ee_dz (0: "
                                 "twists ignored)", lo=0.0, hi=1e6)

    def __post_init__(self) -> None:
        check_ranges(self)

    def joy_mapping(self, action_dim: int) -> tuple[list[int], list[float]] | None:
        """(axis per dimension, scale per dimension), None when Joy commands nothing; a
        mapping that does not fit the action names raises ValueError naming the setting."""
        if all(a < 0 for a in self.joy_axes):
            return None
        if len(self.joy_axes) != action_dim:
            raise ValueError(f"joy_axes has {len(self.joy_axes)} entries; the policy has "
                             f"{action_dim} action dimensions")
        scales = list(self.joy_scales) * action_dim if len(self.joy_scales) == 1 else \
            list(self.joy_scales)
        if len(scales) != action_dim:
            raise ValueError(f"joy_scales has {len(self.joy_scales)} entries; give 1 or "
                             f"{action_dim}")
        return list(self.joy_axes), scales


def joy_action(axes: list[float], axis_of: list[int], scale: list[float]) -> np.ndarray | str:
    """Joy axes -> an action: dimension i is axes[axis_of[i]] * scale[i] (axis -1: 0)."""
    if len(axis_of) != len(scale):
        return f"joy mapping has {len(axis_of)} axes but {len(scale)} scales"
    out = np.zeros(len(axis_of))
    for i, (a, s) in enumerate(zip(axis_of, scale)):
        if a < 0:
            continue
        if a >= len(axes):
            return f"joy message has {len(axes)} axes; the mapping reads axis {a}"
        out[i] = float(axes[a]) * s
    return out


def twist_action(linear: tuple[float, float, float], action_names: list[str], scale: float,
                 rest: np.ndarray | None = None) -> np.ndarray | str:
    """End-effector linear velocity (m/s) -> end-effector delta actions (velocity x scale);
    the other dimensions (a gripper) keep `rest` (0 without)."""
    missing = [n for n in EE_DELTA_NAMES if n not in action_names]
    if missing:
        return (f"a twist maps onto end-effector delta actions {list(EE_DELTA_NAMES)}; this "
                f"policy's actions are {action_names}")
    out = np.zeros(len(action_names)) if rest is None else np.array(rest, float)
    for n, v in zip(EE_DELTA_NAMES, linear):
        out[action_names.index(n)] = float(v) * scale
    return out


class Takeover:
    def __init__(self, low: np.ndarray, high: np.ndarray, stale_s: float) -> None:
        if stale_s <= 0:
            raise ValueError(f"operator_stale_s must be > 0, got {stale_s}")
        self.low, self.high, self.stale_s = np.asarray(low, float), np.asarray(high, float), \
            stale_s
        self.active = False
        self.command_at: float | None = None      # arrival of the last accepted command
        self.last: np.ndarray | None = None

    def request(self, on: bool, episode_running: bool) -> tuple[bool, str]:
        """Press (on) or release the intervene control."""
        if not on:
            was, self.active = self.active, False
            return True, "released: the policy decides next" if was else "not intervening"
        if not episode_running:
            return False, "refused: no episode runs (the arm moves only during an episode)"
        if not self.active:
            self.active, self.command_at, self.last = True, None, None
        return True, "operator in control"

    def end_episode(self) -> None:
        self.active, self.command_at, self.last = False, None, None

    def command(self, action, now: float) -> str:
        """Takes an operator command (arrival time `now`); '' or why it is refused."""
        a = np.asarray(action, float)
        if a.shape != self.low.shape:
            return f"operator command has {a.size} values, the policy's actions {self.low.size}"
        if not np.all(np.isfinite(a)):
            return f"operator command is not finite: {a.tolist()}"
        out = (a < self.low) | (a > self.high)
        if out.any():
            i = int(np.argmax(out))
            return (f"operator command {a[i]:.4g} for dimension {i} lies outside "
                    f"[{self.low[i]:.4g}, {self.high[i]:.4g}]")
        self.last, self.command_at = a, now
        return ""

    def current(self, now: float) -> np.ndarray | str:
        """The command to send now, or why the arm holds instead."""
        if self.last is None or self.command_at is None:
            return "operator in control but no command received yet"
        age = now - self.command_at
        if age > self.stale_s:
            return f"operator commands stale ({age:.2f} s > {self.stale_s} s)"
        return self.last
