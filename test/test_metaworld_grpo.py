"""The in-process Meta-World GRPO runner (bench/bench_learning.py) records what GRPO needs."""
import numpy as np
import pytest
import torch

from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.learner import GRPOConfig, GRPOLearner
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.sim.metaworld_grpo import run_lockstep, to_records
from tinyvla_grpo_ros.sim.metaworld_scene import MetaWorldScene


def test_lockstep_rollouts_record_whole_episodes_that_rescore_to_ratio_one():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    policy = AdaptedPolicy(TinyVLAPolicy(cfg).eval(), AdapterConfig(preset="adapters"),
                           ["reach-v3"])
    sampler = DiffusionSampler(cfg, SamplerConfig(executed_steps=4))
    scenes = [MetaWorldScene("reach-v3", image_size=32, max_steps=24) for _ in range(3)]
    eps = run_lockstep(scenes, policy.model, sampler, [7, 7, 8], False,
                       torch.Generator().manual_seed(0), record=True)
    assert [e.init_state_id for e in eps] == [7, 7, 8]
    assert all(e.steps == 24 and len(e.frames) == 6 for e in eps)   # 24 steps / 4 per chunk
    # the same init state in two scenes starts from the same observation
    assert torch.equal(eps[0].frames[0]["images"], eps[1].frames[0]["images"])
    for e in eps[:2]:
        e.success = e is eps[0]                 # rewards with variance, for the learner
    recs = to_records(eps[:2], "g0", "reach-v3", "reach-v3", 0, scenes[0].instruction, 4)
    assert recs[0].tensors["chains"].shape == (6, 4, cfg.horizon, 4)
    learner = GRPOLearner(policy, sampler, GRPOConfig(group_size=2, epochs=1, device="cpu"))
    stats = learner.update([recs])
    assert stats.first_ratio_max_dev < 1e-4 and stats.optimizer_steps == 1
    for s in scenes:
        s.close()


def x_k_setup(n_scenes: int):
    """A tiny random policy whose K' = K steps are all recorded (chain[0] is x_K), and scenes
    of 8-step reach episodes (two decisions of 4 steps)."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    sampler = DiffusionSampler(cfg, SamplerConfig(executed_steps=4, stochastic_steps=10))
    return (TinyVLAPolicy(cfg).eval(), sampler,
            [MetaWorldScene("reach-v3", image_size=32, max_steps=8) for _ in range(n_scenes)])


def test_shared_init_noise_gives_a_group_one_x_k_per_decision_and_other_groups_another():
    model, sampler, scenes = x_k_setup(4)
    eps = run_lockstep(scenes, model, sampler, [7, 7, 7, 7], False,
                       torch.Generator().manual_seed(0), record=True, shared_init_noise=2)
    x_k = [[f["chains"][0] for f in e.frames] for e in eps]        # K' = K: chain[0] is x_K
    for d in range(2):                                               # both decision points
        assert torch.equal(x_k[0][d], x_k[1][d]) and torch.equal(x_k[2][d], x_k[3][d])
        assert not torch.equal(x_k[0][d], x_k[2][d])
    assert not torch.equal(x_k[0][0], x_k[0][1])                     # fresh at each decision
    # the scored steps are still each episode's own
    assert not torch.equal(eps[0].frames[0]["chains"][-1], eps[1].frames[0]["chains"][-1])
    with pytest.raises(ValueError, match="group size"):
        run_lockstep(scenes, model, sampler, [7, 7], False, torch.Generator(),
                     shared_init_noise=-2)
    for s in scenes:
        s.close()


def test_paired_evaluation_gives_a_state_the_same_x_k_at_each_decision_whatever_runs_beside():
    model, sampler, scenes = x_k_setup(3)

    def x_k(ids, key, gen_seed):                    # K' = K: chain[0] is x_K
        eps = run_lockstep(scenes, model, sampler, ids, True,
                           torch.Generator().manual_seed(gen_seed), record=True, noise_key=key)
        return {e.init_state_id: [f["chains"][0] for f in e.frames] for e in eps}

    alone, beside = x_k([8], 5, 0), x_k([7, 9, 8], 5, 1)
    for d in range(2):                              # both decisions of state 8
        assert torch.equal(alone[8][d], beside[8][d])
        assert not torch.equal(beside[7][d], beside[8][d])
    assert not torch.equal(alone[8][0], alone[8][1])            # fresh at each decision
    assert not torch.equal(x_k([8], 6, 0)[8][0], alone[8][0])   # another key, another draw
    with pytest.raises(ValueError, match="one of them"):
        run_lockstep(scenes, model, sampler, [7, 7], False, torch.Generator(),
                     shared_init_noise=2, noise_key=0)
    for s in scenes:
        s.close()


def test_runner_reports_last_and_kept_version_with_their_held_out_success(tmp_path):
    from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
    from tinyvla_grpo_ros.sim.metaworld_grpo import run_metaworld_grpo
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg), SamplerConfig(executed_steps=4))
    res = run_metaworld_grpo(ckpt, "reach-v3", episodes=8, preset="adapters",
                             grpo=GRPOConfig(group_size=2, epochs=1, device="cpu"),
                             groups_per_update=2, pool_size=3, heldout=2, eval_every=1,
                             sampler_overrides={"stochastic_steps": 1}, log=lambda s: None,
                             init_sampling="informative", state_rollouts=2, eval_draws=2,
                             max_steps=8)
    assert res["episodes"] == 8 and len(res["curve"]) == 3           # SFT + 2 updates
    # each evaluation is the mean of its 2 paired x_K draws
    draws = res["eval_draw_success"]
    assert len(draws["cell"]) == 3 and all(len(d) == 2 for d in draws["cell"])
    assert [r for _, r in res["curve"]] == pytest.approx([sum(d) / 2 for d in draws["cell"]])
    assert sum(draws["heldout"][0]) / 2 == pytest.approx(res["heldout_sft_success"])
    for bad in (0, 1001):                   # 1001: noise keys would overlap between seeds
        with pytest.raises(ValueError, match="eval_draws"):
            run_metaworld_grpo(ckpt, "reach-v3", episodes=8, eval_draws=bad, log=lambda s: None)
    assert res["sampler"]["stochastic_steps"] == 1 and res["init_sampling"] == "informative"
    assert all(u["groups"] == 2 for u in res["updates"])             # two distinct states each
    # the kept version is the best evaluation (later wins ties), its held-out figure measured
    assert res["kept_success"] == max(r for _, r in res["curve"])
    assert 0 <= res["kept_version"] <= res["versions"]
    if res["kept_version"] == res["versions"]:
        assert res["heldout_kept_success"] == res["heldout_final_success"]
    assert 0.0 <= res["heldout_kept_success"] <= 1.0
    # per-state outcomes of 2 stochastic rollouts, at SFT and at the last version
    out = res["state_outcomes"]
    for when in ("sft", "last"):
        assert len(out[when]) == 3 and all(0 <= s <= 2 for s in out[when])
        assert sum(out[f"{when}_classes"].values()) == 3


def test_null_experiment_keeps_each_groups_outcome_count_and_moves_the_credit():
    from tinyvla_grpo_ros.sim.metaworld_grpo import LockstepEpisode, credit_at_random
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(20):
        eps = [LockstepEpisode(i // 4, success=i in (0, 1, 5)) for i in range(8)]
        credit_at_random(eps, 4, rng)
        assert [sum(e.success for e in eps[g:g + 4]) for g in (0, 4)] == [2, 1]
        moved += [e.success for e in eps] != [i in (0, 1, 5) for i in range(8)]
    assert moved >= 15


def test_an_episodes_first_frame_does_not_depend_on_the_episode_before():
    from tinyvla_grpo_ros.sim.metaworld_scene import expert_policy
    used, fresh = (MetaWorldScene("push-v3", image_size=32, goal_marker_radius=0.04)
                   for _ in range(2))
    expert = expert_policy("push-v3")
    used.reset(3)
    while not used.step(used.expert_action(expert)).done:    # the puck ends somewhere else
        pass
    used.reset(7)
    fresh.reset(7)
    assert np.array_equal(used.render(), fresh.render())
    # the scripted expert reads the object from Meta-World's observation: same fix, same frame
    assert np.array_equal(used.obs, fresh.obs)
    assert np.array_equal(used.expert_action(expert), fresh.expert_action(expert))
    for s in (used, fresh):
        s.close()


def test_progress_reward_ranks_a_groups_failures_and_keeps_every_success_above_them():
    from tinyvla_grpo_ros.core.grpo import group_advantages, outcome_reward
    assert outcome_reward(True, 0.2, 0.0) == 1.0 and outcome_reward(False, 0.9, 0.0) == 0.0
    # all failures: the success bit gives no signal, progress ranks them
    failures = [outcome_reward(False, p, 0.5) for p in (0.1, 0.8, 0.4)]
    assert group_advantages(torch.tensor([0.0, 0.0, 0.0])) is None
    adv = group_advantages(torch.tensor(failures))
    assert adv is not None and adv.argmax() == 1 and adv.argmin() == 0
    # a success outranks the closest failure at any weight below 1
    assert outcome_reward(True, 0.0, 0.99) > outcome_reward(False, 1.0, 0.99)
    for bad in ((False, 0.5, 1.0), (False, 0.5, -0.1), (False, 1.5, 0.5), (False, -0.1, 0.5)):
        with pytest.raises(ValueError):
            outcome_reward(*bad)


def test_scene_progress_rises_toward_the_goal_and_resets_with_the_scene():
    from tinyvla_grpo_ros.sim.metaworld_scene import expert_policy
    scene = MetaWorldScene("reach-v3", image_size=32)
    expert = expert_policy("reach-v3")
    scene.reset(5)
    r = scene.step(np.zeros(4))
    start = r.progress
    assert 0.0 <= start < 0.5
    seen = [start]
    for sign in [1] * 20 + [-1] * 30:           # toward the goal, then back away from it
        r = scene.step(sign * scene.expert_action(expert))
        seen.append(r.progress)
    assert seen[20] > start + 0.1
    assert seen == sorted(seen)                 # the episode's best: backing away keeps it
    while not r.done:
        r = scene.step(scene.expert_action(expert))
    assert r.success and r.progress > 0.9
    scene.reset(5)
    assert scene.progress == 0.0
    assert scene.step(np.zeros(4)).progress == pytest.approx(start)
    scene.close()


def test_records_carry_the_progress_reward_and_the_null_experiment_moves_it_with_success():
    from tinyvla_grpo_ros.sim.metaworld_grpo import LockstepEpisode, credit_at_random
    frame = {"images": torch.zeros(3, 8, 8), "states": torch.zeros(9),
             "chains": torch.zeros(2, 4, 4), "log_probs": torch.zeros(1)}
    eps = [LockstepEpisode(0, success=s, progress=p, frames=[frame])
           for s, p in ((True, 0.9), (False, 0.6), (False, 0.2))]
    recs = to_records(eps, "g", "t", "t", 0, "i", 4, progress_weight=0.5)
    assert [r.reward for r in recs] == [1.0, 0.3, 0.1]
    assert [r.success for r in recs] == [True, False, False]
    assert [r.reward for r in to_records(eps, "g", "t", "t", 0, "i", 4)] == [1.0, 0.0, 0.0]
    rng = np.random.default_rng(1)
    pairs = {(e.success, e.progress) for e in eps}
    for _ in range(5):
        credit_at_random(eps, 3, rng)
        assert {(e.success, e.progress) for e in eps} == pairs


def test_explore_window_makes_a_group_one_episode_outside_it_and_records_only_inside():
    model, sampler, scenes = x_k_setup(4)
    for s in scenes:
        s.max_steps = 16                                 # four decisions of 4 steps
    windows = [range(1, 3)] * 2 + [range(0, 1)] * 2      # two groups of two
    eps = run_lockstep(scenes, model, sampler, [7, 7, 9, 9], False,
                       torch.Generator().manual_seed(0), record=True, shared_init_noise=2,
                       explore=windows)
    assert [len(e.frames) for e in eps] == [2, 2, 1, 1]
    # group 0 is one deterministic episode up to decision 1: its first explored frame is the same
    assert torch.equal(eps[0].frames[0]["images"], eps[1].frames[0]["images"])
    # inside the window the scored steps are each rollout's own, and they re-score to ratio 1
    assert not torch.equal(eps[0].frames[0]["chains"][-1], eps[1].frames[0]["chains"][-1])
    eps[0].success, eps[1].success = True, False
    recs = to_records(eps[:2], "g0", "reach-v3", "reach-v3", 0, scenes[0].instruction, 4)
    learner = GRPOLearner(AdaptedPolicy(model, AdapterConfig(preset="head"), ["reach-v3"]),
                          sampler, GRPOConfig(group_size=2, epochs=1, device="cpu"))
    stats = learner.update([recs])
    assert stats.chunks == 4 and stats.first_ratio_max_dev < 1e-4
    # outside a window the chunk is the deterministic one: a window that never opens gives the
    # deterministic episode, step for step
    det = run_lockstep(scenes[:1], model, sampler, [7], True, torch.Generator(),
                       noise_key=3)
    none = run_lockstep(scenes[:1], model, sampler, [7], False, torch.Generator(),
                        record=True, explore=[range(0)], noise_key=3)
    assert none[0].frames == [] and none[0].steps == det[0].steps
    assert none[0].progress == det[0].progress and none[0].success == det[0].success
    with pytest.raises(ValueError, match="window"):
        run_lockstep(scenes, model, sampler, [7, 7], False, torch.Generator(),
                     explore=[range(1)])
    for s in scenes:
        s.close()


def test_an_episode_that_ended_before_its_window_counts_in_the_baseline_and_adds_no_chunk():
    from tinyvla_grpo_ros.core.learner import UpdateStats, build_batch
    from tinyvla_grpo_ros.sim.metaworld_grpo import LockstepEpisode
    frame = {"images": torch.zeros(1, 8, 8, 3, dtype=torch.uint8), "states": torch.zeros(9),
             "chains": torch.zeros(2, 16, 4), "log_probs": torch.zeros(1)}
    eps = [LockstepEpisode(7, success=True, frames=[frame, frame]),
           LockstepEpisode(7, success=False, frames=[frame, frame]),
           LockstepEpisode(7, success=True)]                 # no explored decision
    recs = to_records(eps, "g", "t", "t", 0, "i", 4)
    assert recs[2].num_chunks == 0 and recs[2].reward == 1.0
    b = build_batch([recs], GRPOConfig(group_size=3, device="cpu"), UpdateStats())
    # rewards 1, 0, 1: A = (r - 2/3) / sqrt(2/9), the empty episode's reward in the mean
    assert b.advantages.tolist() == pytest.approx([2 ** -0.5] * 2 + [-(2 ** 0.5)] * 2, rel=1e-5)


def test_runner_explores_in_windows_of_decisions_and_refuses_a_window_longer_than_an_episode(
        tmp_path):
    from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
    from tinyvla_grpo_ros.sim.metaworld_grpo import run_metaworld_grpo
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg), SamplerConfig(executed_steps=4))
    kw = dict(preset="head", grpo=GRPOConfig(group_size=2, epochs=1, device="cpu"),
              groups_per_update=2, pool_size=2, heldout=1, log=lambda s: None, max_steps=8)
    res = run_metaworld_grpo(ckpt, "reach-v3", episodes=8, explore_window=1, **kw)
    assert res["explore_window"] == 1 and len(res["updates"]) == 2
    # one explored decision per episode: at most 2 groups x 2 episodes x 1 chunk per update
    assert all(u["chunks"] <= 4 for u in res["updates"])
    with pytest.raises(ValueError, match="explore_window"):
        run_metaworld_grpo(ckpt, "reach-v3", episodes=8, explore_window=3, **kw)   # 2 decisions
