"""The operator's takeover, without ROS: refusals, bad and stale commands, the teleop mappings."""
import numpy as np
import pytest

from tinyvla_grpo_ros.core.takeover import Takeover, joy_action, twist_action

LOW, HIGH = -np.ones(4), np.ones(4)


def test_a_takeover_needs_a_running_episode_and_release_hands_back():
    t = Takeover(LOW, HIGH, stale_s=0.3)
    ok, why = t.request(True, episode_running=False)
    assert not ok and "no episode" in why and not t.active
    assert t.request(True, episode_running=True)[0] and t.active
    assert t.request(False, episode_running=True) == (True, "released: the policy decides next")
    assert not t.active


def test_bad_operator_commands_are_refused_by_name_and_change_nothing():
    t = Takeover(LOW, HIGH, stale_s=0.3)
    t.request(True, True)
    assert "no command" in t.current(0.0)
    assert t.command([0.1, 0.2, 0.0, 0.5], now=0.0) == ""
    assert "not finite" in t.command([np.nan, 0, 0, 0], now=0.01)
    assert "dimension 2" in t.command([0, 0, 5.0, 0], now=0.01)
    assert "4" in t.command([0, 0], now=0.01)
    assert t.current(0.02).tolist() == [0.1, 0.2, 0.0, 0.5]        # the last good command
    assert "stale" in t.current(0.5)                               # a silent operator: hold
    t.end_episode()
    assert not t.active and "no command" in t.current(0.6)


def test_joy_axes_and_twists_map_onto_the_policy_actions():
    assert joy_action([0.5, -1.0, 0.2], [1, 0, -1, 2], [0.5, 1.0, 1.0, 2.0]).tolist() == \
        pytest.approx([-0.5, 0.5, 0.0, 0.4])
    assert "reads axis 5" in joy_action([0.0], [5, -1, -1, -1], [1, 1, 1, 1])
    names = ["ee_dx", "ee_dy", "ee_dz", "gripper"]
    a = twist_action((0.1, 0.0, -0.2), names, scale=5.0, rest=np.array([0, 0, 0, 0.7]))
    assert a.tolist() == pytest.approx([0.5, 0.0, -1.0, 0.7])
    assert "end-effector" in twist_action((0, 0, 0), ["j0", "j1"], scale=1.0)
    with pytest.raises(ValueError):
        Takeover(LOW, HIGH, stale_s=0.0)
