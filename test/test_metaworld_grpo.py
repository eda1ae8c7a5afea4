"""The in-process Meta-World GRPO runner (bench/bench_learning.py) records what GRPO needs."""
import numpy as np
import pytest
import torch

from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.learner import GRPOConfig, GRPOLearner
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.sim.metaworld_grpo import RunConfig, to_records
from tinyvla_grpo_ros.sim.metaworld_scene import MetaWorldScene
from tinyvla_grpo_ros.sim.rollout import run_lockstep


def test_lockstep_rollouts_record_whole_episodes_that_rescore_to_ratio_one():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    model = TinyVLAPolicy(cfg).eval()
    sampler = DiffusionSampler(cfg, SamplerConfig(executed_steps=4), sft_model=model)
    policy = AdaptedPolicy(model, AdapterConfig(preset="adapters"), ["reach-v3"])
    scenes = [MetaWorldScene("reach-v3", image_size=32, max_steps=24) for _ in range(3)]
    eps = run_lockstep(scenes, policy.model, sampler, [7, 7, 8], False,
                       torch.Generator().manual_seed(0), record=True)
    assert [e.init_state_id for e in eps] == [7, 7, 8]
    assert all(e.steps == 24 and len(e.frames) == 6 for e in eps)   # 24 steps / 4 per chunk
    # the same init state in two scenes starts from the same observation
    assert torch.equal(eps[0].frames[0]["images"], eps[1].frames[0]["images"])
    for e in eps[:2]:
        e.success = e is eps[0]                 # rewards with variance, for the learner
    recs = to_records(eps[:2], "g0", "reach-v3", 0, scenes[0].instruction)
    assert [r.reward for r in recs] == [1.0, 0.0]
    assert recs[0].tensors["executed"].tolist() == [4] * 6
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
    model = TinyVLAPolicy(cfg).eval()
    sampler = DiffusionSampler(cfg, SamplerConfig(executed_steps=4, stochastic_steps=10),
                               sft_model=model)
    return (model, sampler,
            [MetaWorldScene("reach-v3", image_size=32, max_steps=8) for _ in range(n_scenes)])


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
    for s in scenes:
        s.close()


def test_runner_reports_last_and_kept_version_with_their_held_out_success(tmp_path):
    from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
    from tinyvla_grpo_ros.sim.metaworld_grpo import run_metaworld_grpo
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg), SamplerConfig(executed_steps=4))
    run = RunConfig(episodes=8, preset="adapters", groups_per_update=2, cell=3, heldout=2,
                    eval_every=1, init_sampling="informative", state_rollouts=2, eval_draws=2,
                    max_steps=8)
    res = run_metaworld_grpo(ckpt, "reach-v3", 0, run,
                             GRPOConfig(group_size=2, epochs=1, device="cpu"),
                             sampler_overrides={"stochastic_steps": 1}, log=lambda s: None)
    assert res["episodes"] == 8 and len(res["curve"]) == 3           # SFT + 2 updates
    # each evaluation is the mean of its 2 paired x_K draws
    draws = res["eval_draw_success"]
    assert len(draws["cell"]) == 3 and all(len(d) == 2 for d in draws["cell"])
    assert [r for _, r in res["curve"]] == pytest.approx([sum(d) / 2 for d in draws["cell"]])
    assert sum(draws["heldout"][0]) / 2 == pytest.approx(res["heldout_sft_success"])
    for bad in (0, 1001):                   # 1001: noise keys would overlap between seeds
        with pytest.raises(ValueError, match="eval_draws"):
            RunConfig(eval_draws=bad)
    assert res["sampler"]["stochastic_steps"] == 1
    assert res["run"]["init_sampling"] == "informative" and res["grpo"]["group_size"] == 2
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




def test_every_stored_version_is_evaluated_on_the_same_states_and_draws(tmp_path):
    from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig, save_adapter_version
    from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
    from tinyvla_grpo_ros.sim.evaluate import evaluate_versions
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg), SamplerConfig(executed_steps=4))
    acfg = AdapterConfig(preset="adapters", rank=2)
    policy = AdaptedPolicy(TinyVLAPolicy(cfg), acfg, ["reach-v3"])
    for v in (0, 1):
        save_adapter_version(policy, tmp_path / "adapters", v, parent=v - 1 if v else None)
    res = evaluate_versions(ckpt, tmp_path / "adapters", "reach-v3", acfg, [5, 6, 7],
                            {"frozen_prefix": True}, scenes_at_once=2, max_steps=8,
                            log=lambda s: None)
    assert sorted(res) == [0, 1] and all(len(w) == 3 for w in res.values())
    assert res[0] == res[1]       # v1 holds the same (untrained) tensors: the same draws, paired
