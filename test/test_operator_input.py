"""Joy edge detection and hold-to-confirm for the operator's gamepad or foot pedal."""
import pytest

from tinyvla_grpo_ros.core.operator_input import JoyMarker


def test_rising_edge_fires_once_per_press():
    j = JoyMarker({"success": 0, "failure": 1})
    assert j.update([1, 0], 0.0) == ["success"]
    assert j.update([1, 0], 0.1) == []                  # still held: no repeat
    assert j.update([0, 0], 0.2) == []
    assert j.update([1, 0], 0.3) == ["success"]         # a new press
    assert j.update([1, 1], 0.4) == ["failure"]


def test_hold_to_confirm_needs_the_full_hold():
    j = JoyMarker({"success": 2}, hold_s=0.5)
    assert j.update([0, 0, 1], 0.0) == []
    assert j.update([0, 0, 1], 0.4) == []
    assert j.update([0, 0, 0], 0.45) == []              # released early: nothing
    assert j.update([0, 0, 1], 1.0) == []
    assert j.update([0, 0, 1], 1.6) == ["success"]
    assert j.update([0, 0, 1], 3.0) == []


def test_short_button_arrays_and_unmapped_actions_are_ignored():
    j = JoyMarker({"success": 5, "discard": -1})
    assert j.update([1, 1], 0.0) == []


def test_two_actions_on_one_button_are_rejected():
    with pytest.raises(ValueError, match="share a button"):
        JoyMarker({"success": 1, "failure": 1})
