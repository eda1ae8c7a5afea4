"""Observation history (n_obs_steps > 1): which reading stands for which control step."""
import numpy as np
import pytest

from tinyvla_grpo_ros.core.observation_history import StampedHistory, history_steps, stack_steps

DT = 0.0125                                          # 80 Hz control


def feed(stamps, span=DT):
    h = StampedHistory(span)
    for s in stamps:
        h.add(s, f"r@{s:.4f}")
    return h


def test_each_step_takes_the_reading_stamped_nearest_to_it():
    # a camera at ~100 Hz with jitter; the current reading at t0 = 1.0
    stamps = [0.9, 0.951, 0.962, 0.968, 0.981, 0.99, 1.0]
    got = history_steps(feed(stamps, span=3 * DT), 4, DT, 0.1, "camera c")
    # steps t0 - 3dt = 0.9625, t0 - 2dt = 0.975, t0 - dt = 0.9875, t0: the nearest reading
    assert got == ["r@0.9620", "r@0.9810", "r@0.9900", "r@1.0000"]


def test_before_the_episodes_first_reading_the_first_one_is_repeated():
    assert history_steps(feed([5.0]), 2, DT, 0.1, "c") == ["r@5.0000", "r@5.0000"]
    assert history_steps(feed([5.0, 5.0125], span=2 * DT), 3, DT, 0.1, "c") == \
        ["r@5.0000", "r@5.0000", "r@5.0125"]


def test_a_stream_that_skipped_the_steps_is_named_not_silently_used():
    # a camera that published only at decision points, 50 ms apart
    problem = history_steps(feed([1.0, 1.05]), 2, DT, 0.01, "camera image_raw")
    assert isinstance(problem, str)
    assert "camera image_raw has no reading within 0.010 s" in problem
    assert "n_obs_steps 2 needs one every control period (12.5 ms)" in problem
    assert history_steps(feed([]), 2, DT, 0.1, "joint_states") == "no reading yet on joint_states"


def test_it_keeps_only_what_a_decision_can_still_need():
    h = feed(np.arange(0.0, 10.0, 0.002).tolist(), span=DT)       # joint states at 500 Hz
    assert len(h) <= 8                               # ~ dt / 2 ms + the reading before it
    assert history_steps(h, 2, DT, 0.1, "c") == ["r@9.9860", "r@9.9980"]


def test_out_of_order_readings_are_ignored_and_an_episode_restarts_from_the_newest():
    h = feed([1.0, 1.0125, 1.005])
    assert [v for _, v in h.items] == ["r@1.0000", "r@1.0125"]
    h.restart()
    assert history_steps(h, 3, DT, 0.1, "c") == ["r@1.0125"] * 3


def test_steps_stack_oldest_first_into_the_policys_layout():
    frames = [np.full((2, 4, 4, 3), k, np.uint8) for k in range(3)]     # 3 steps, 2 cameras
    states = [np.full(5, float(k)) for k in range(3)]
    images, state = stack_steps(frames, states)
    assert images.shape == (6, 4, 4, 3) and state.shape == (15,)
    assert [int(images[i, 0, 0, 0]) for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert state[:5].max() == 0 and state[10:].min() == 2


@pytest.mark.parametrize("steps", [0, 9])
def test_a_model_with_more_observation_steps_than_its_horizon_is_refused(steps):
    from tinyvla_grpo_ros.core.config import ModelConfig
    with pytest.raises(ValueError, match="n_obs_steps"):
        ModelConfig(architecture="diffusion_policy", n_obs_steps=steps, horizon=8)


def test_only_the_diffusion_policy_architecture_takes_history_and_sft_refuses_it():
    from tinyvla_grpo_ros.core.config import ModelConfig, SFTConfig
    from tinyvla_grpo_ros.core.dp_model import DiffusionPolicyModel
    from tinyvla_grpo_ros.core.sft import train_sft
    with pytest.raises(ValueError, match="supported by the diffusion_policy architecture only"):
        ModelConfig(n_obs_steps=2)
    cfg = ModelConfig(architecture="diffusion_policy", n_obs_steps=2, image_size=32,
                      dp_keypoints=2, down_dims=(16, 32), state_dim=3, action_dim=2)
    with pytest.raises(ValueError, match="SFT here trains on one observation step"):
        train_sft(DiffusionPolicyModel(cfg), [], SFTConfig(steps=1))
