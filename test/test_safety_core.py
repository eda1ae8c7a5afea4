"""ActionLimits and Watchdog: the pure parts of the arm's safety (core/safety.py)."""
import numpy as np
import pytest

from tinyvla_grpo_ros.core.safety import ActionLimits, Watchdog


def test_limits_clamp_every_dimension_and_replace_non_finite_values():
    lim = ActionLimits(np.array([-1.0, 0.0]), np.array([1.0, 0.5]))
    out = lim.apply(np.array([[3.0, -2.0], [np.nan, np.inf], [-np.inf, 0.2]]))
    assert out.tolist() == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.2]]


def test_rate_limit_counts_from_the_action_in_force_and_across_steps():
    lim = ActionLimits(np.full(2, -1.0), np.full(2, 1.0), max_delta=0.1)
    out = lim.apply(np.array([[1.0, -1.0], [1.0, -1.0], [0.0, 0.0]]), prev=np.array([0.5, 0.0]))
    np.testing.assert_allclose(out, [[0.6, -0.1], [0.7, -0.2], [0.6, -0.1]])
    steps = np.diff(np.vstack([[0.5, 0.0], out]), axis=0)
    assert np.all(np.abs(steps) <= 0.1 + 1e-12)


def test_without_a_previous_action_the_first_step_is_only_clamped():
    lim = ActionLimits(np.full(1, -1.0), np.full(1, 1.0), max_delta=0.1)
    np.testing.assert_allclose(lim.apply(np.array([[0.9], [0.0]])), [[0.9], [0.8]])


def test_previous_action_is_joint_positions_for_position_actions_else_last_command_or_rest():
    joints, state = ["a", "b", "c"], np.array([1.0, 2.0, 3.0])
    assert ActionLimits.previous(["c", "a"], joints, state, None).tolist() == [3.0, 1.0]
    assert ActionLimits.previous(["dx", "dy"], joints, state, None).tolist() == [0.0, 0.0]
    assert ActionLimits.previous(["dx", "dy"], joints, state, np.array([0.3, -0.1])).tolist() \
        == [0.3, -0.1]


def test_limits_refuse_inconsistent_settings():
    with pytest.raises(ValueError, match="low <= high"):
        ActionLimits(np.array([1.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="finite"):
        ActionLimits(np.array([-np.inf]), np.array([0.0]))
    with pytest.raises(ValueError, match="max_delta"):
        ActionLimits(np.array([0.0]), np.array([1.0]), max_delta=-1)
    with pytest.raises(ValueError, match=r"\(Ta, 1\)"):
        ActionLimits(np.array([0.0]), np.array([1.0])).apply(np.zeros((2, 3)))


def test_watchdog_fires_once_per_lapse_and_only_while_armed():
    wd = Watchdog(0.5)
    assert wd.expired(100.0) is None                      # not armed: no episode runs
    wd.arm(10.0)
    assert wd.expired(10.4) is None
    assert wd.expired(10.6) == pytest.approx(0.6)
    assert wd.expired(11.0) is None                       # once per lapse
    wd.feed(11.0)
    assert wd.expired(11.4) is None
    assert wd.expired(11.6) is not None and wd.fired_count == 2
    wd.disarm()
    wd.feed(20.0)                                         # a late command does not re-arm it
    assert wd.expired(30.0) is None
    off = Watchdog(0.0)
    off.arm(0.0)
    assert off.expired(1e6) is None
