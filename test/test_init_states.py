"""Init-state sampling (core/init_states.py): where the next group starts."""
import numpy as np
import pytest

from tinyvla_grpo_ros.core.init_states import (
    init_state_weights,
    latest_groups,
    outcome_classes,
    pick_init_states,
)


def test_latest_group_of_each_state_wins():
    latest = latest_groups([(3, [True] * 8), (5, [False, True]), (3, [True, False, False])])
    assert latest == {3: (1, 3), 5: (1, 2)}


def test_informative_weight_is_the_expected_bernoulli_variance():
    w = init_state_weights([0, 1, 2, 3], {1: (4, 8), 2: (8, 8), 3: (0, 8)}, "informative")
    assert w[0] == pytest.approx(0.25 / 2)              # unseen: Beta(1/2, 1/2)
    assert w[1] == pytest.approx(4.5**2 / 90)           # Beta(4.5, 4.5)
    assert w[2] == pytest.approx(8.5 * 0.5 / 90) == w[3]   # Beta(8.5, 1/2), Beta(1/2, 8.5)
    assert w[1] > w[0] > w[2] > 0


def test_skip_solved_never_picks_a_solved_state_while_others_remain():
    rng = np.random.default_rng(0)
    latest = {0: (8, 8), 1: (8, 8), 2: (3, 8)}
    picks = [pick_init_states([0, 1, 2, 3], latest, "skip_solved", rng, 2) for _ in range(200)]
    assert all(sorted(p) == [2, 3] for p in picks)
    # everything solved: still a state (any), never an error
    assert pick_init_states([0, 1], {0: (8, 8), 1: (8, 8)}, "skip_solved", rng, 2) in ([0, 1],
                                                                                       [1, 0])


def test_picks_are_distinct_and_bad_requests_are_refused():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = pick_init_states(list(range(5)), {}, "informative", rng, 5)
        assert sorted(p) == list(range(5))
    with pytest.raises(ValueError, match="cannot draw 3"):
        pick_init_states([0, 1], {}, "uniform", rng, 3)
    with pytest.raises(ValueError, match="init_state_sampling must be one of"):
        pick_init_states([0, 1], {}, "greedy", rng, 1)


def test_informative_sampling_wastes_fewer_groups_than_uniform():
    """States with a fixed success probability: 0 (hopeless), 1 (solved) or 0.5. A group of G
    carries signal only when its outcomes differ; informative sampling finds the mixed states."""
    p_success = np.array([0.0] * 8 + [1.0] * 8 + [0.5] * 4)
    ids, G = list(range(len(p_success))), 8

    def signal_fraction(mode: str, seed: int) -> float:
        rng, latest, useful = np.random.default_rng(seed), {}, []
        for _ in range(100):
            i = pick_init_states(ids, latest, mode, rng)[0]
            wins = rng.random(G) < p_success[i]
            latest[i] = (int(wins.sum()), G)
            useful.append(0 < wins.sum() < G)
        return float(np.mean(useful))

    uniform = np.mean([signal_fraction("uniform", s) for s in range(5)])
    informative = np.mean([signal_fraction("informative", s) for s in range(5)])
    assert uniform < 0.3 and informative > uniform + 0.2


def test_outcome_classes_split_states_into_never_mixed_always():
    assert outcome_classes([0, 3, 8, 8, 1, 0], 8) == {"never": 2, "mixed": 2, "always": 2}
    with pytest.raises(ValueError, match="lie in"):
        outcome_classes([9], 8)
    with pytest.raises(ValueError, match="rollouts"):
        outcome_classes([0], 0)
