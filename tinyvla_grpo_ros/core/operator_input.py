"""Gamepad / foot-pedal input for the operator: rising edges and hold-to-confirm (no ROS here).

`JoyMarker.update(buttons, now)` takes the button array of a sensor_msgs/Joy message and returns
the actions to fire: an action fires once per press, when its button has been held for `hold_s`
(0 = on the rising edge itself), and never again until the button is released.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JoyMarker:
    mapping: dict[str, int]              # action name -> button index (-1 = unmapped)
    hold_s: float = 0.0
    _pressed_at: dict[str, float] = field(default_factory=dict)
    _fired: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {self.hold_s}")
        used = [b for b in self.mapping.values() if b >= 0]
        if len(used) != len(set(used)):
            raise ValueError(f"two actions share a button: {self.mapping}")

    def update(self, buttons: list[int], now: float) -> list[str]:
        fire = []
        for action, idx in self.mapping.items():
            down = 0 <= idx < len(buttons) and bool(buttons[idx])
            if not down:
                self._pressed_at.pop(action, None)
                self._fired.discard(action)
                continue
            start = self._pressed_at.setdefault(action, now)     # rising edge
            if action not in self._fired and now - start >= self.hold_s:
                self._fired.add(action)
                fire.append(action)
        return fire
