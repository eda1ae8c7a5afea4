"""RegressionGuard: which evaluation is the reference, when it rolls back, restored copies."""
import pytest

from tinyvla_grpo_ros.core.regression_guard import RegressionGuard


def test_first_evaluation_is_the_reference_and_small_drops_are_kept():
    g = RegressionGuard(margin=0.25)
    assert g.record(0, 5, 8).rollback_to is None           # 0.625, nothing to compare with
    d = g.record(1, 4, 8)                                  # 0.5: within the margin
    assert d.rollback_to is None and d.reason.startswith("kept")


def test_a_drop_beyond_the_margin_rolls_back_to_the_last_kept_version():
    g = RegressionGuard(margin=0.25)
    g.record(0, 5, 8)
    g.record(1, 6, 8)
    d = g.record(2, 2, 8)                                  # 0.25 < 0.75 - 0.25
    assert d.rollback_to == 1 and "regression" in d.reason
    # v2 is never a reference: v3 is compared with v1, not with the bad v2
    assert g.reference(3).version == 1
    assert g.record(3, 3, 8).rollback_to == 1


def test_a_restored_copy_carries_its_source_evaluation_and_needs_none():
    g = RegressionGuard(margin=0.2)
    g.record(0, 6, 8)
    g.record(1, 1, 8)                                      # rolled back to v0
    g.restored(2, 0)
    assert not g.needs_evaluation(2) and g.needs_evaluation(3)
    assert g.reference(3).version == 2 and g.reference(3).rate == pytest.approx(0.75)


def test_repeated_evaluations_of_one_version_add_up():
    g = RegressionGuard(margin=0.3)
    g.record(0, 4, 4)
    assert g.record(1, 0, 2).rollback_to == 0               # 0.0 over 2 episodes
    g2 = RegressionGuard(margin=0.3)
    g2.record(0, 4, 4)
    assert g2.record(1, 2, 2).rollback_to is None           # 1.0 over 2
    d = g2.record(1, 0, 6)                                  # 2 of 8 in all: 0.25
    assert g2.evaluations[1].episodes == 8 and d.rollback_to == 0


def test_guard_refuses_a_margin_outside_zero_one():
    with pytest.raises(ValueError, match="margin"):
        RegressionGuard(margin=1.5)
