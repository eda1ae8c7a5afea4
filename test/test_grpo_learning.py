"""A weak SFT policy gets better under GRPO on the toy reach task (fixed seed, ~1 min on CPU)."""
from tinyvla_grpo_ros.sim.toy_grpo import run_toy_grpo, toy_grpo_config


def test_toy_reach_success_rises_under_grpo():
    res = run_toy_grpo(seed=0, updates=12, states_per_update=8, num_init_states=16,
                       preset="adapters+head+norms", eval_every=2,
                       grpo=toy_grpo_config())
    print(f"toy reach: before {res.success_before:.3f} after {res.success_after:.3f} "
          f"best {res.best_success:.3f} episodes {res.episodes} curve {res.curve}")
    assert res.episodes == 12 * 8 * 8
    assert res.best_success >= res.success_before + 0.2, res.curve
    assert res.success_after > res.success_before, res.curve
