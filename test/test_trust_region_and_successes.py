"""The exact trust region (frozen_prefix) and the denoising loss on successful chunks."""
import dataclasses

import pytest
import torch
from helpers import random_obs, tiny_model

from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig, save_adapter_version
from tinyvla_grpo_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tinyvla_grpo_ros.core.config import GRPOConfig, SamplerConfig
from tinyvla_grpo_ros.core.learner import GRPOLearner
from tinyvla_grpo_ros.core.model import Observation
from tinyvla_grpo_ros.core.policy_runtime import PolicyRuntime
from tinyvla_grpo_ros.core.rollout_store import RolloutStore, episode_record
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.core.sft import denoising_loss
from tinyvla_grpo_ros.core.success_window import SuccessWindow
from tinyvla_grpo_ros.core.synthetic import synthetic_groups

BASE = dict(group_size=4, lr=1e-2, epochs=2, minibatch_size=4, micro_batch_size=4,
            target_kl=0.0, warmup_steps=0, base_lr_scale=1.0, device="cpu")


def setup(frozen_prefix=True, preset="adapters+head+norms", seed=0, **grpo):
    model = tiny_model(seed)
    sampler = DiffusionSampler(model.config, SamplerConfig(stochastic_steps=2,
                                                           frozen_prefix=frozen_prefix),
                               sft_model=model)
    policy = AdaptedPolicy(model, AdapterConfig(preset=preset, rank=2), ["pick"])
    return policy, sampler, GRPOLearner(policy, sampler, GRPOConfig(**(BASE | grpo)))


def x_kprime(policy, sampler):
    obs = random_obs(policy.model.config, B=3, seed=7)
    cfg = policy.model.config
    x_K = torch.randn((3, cfg.horizon, cfg.action_dim), generator=torch.Generator().manual_seed(1))
    return sampler.prefix(policy.model, obs, x_K)


def params(policy):
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


@pytest.mark.parametrize("frozen", [True, False])
def test_updates_leave_x_kprime_bit_identical_only_with_the_frozen_prefix(frozen):
    policy, sampler, learner = setup(frozen)
    before = x_kprime(policy, sampler)
    for v in range(2):
        assert learner.update(synthetic_groups(policy, sampler, version=v)).optimizer_steps
    after = x_kprime(policy, sampler)
    assert torch.equal(before, after) == frozen


def test_frozen_prefix_without_the_sft_model_is_refused_when_sampling():
    model = tiny_model()
    sampler = DiffusionSampler(model.config, SamplerConfig(frozen_prefix=True))
    with pytest.raises(ValueError, match="sft_model"):
        sampler.sample(model, random_obs(model.config, B=1))


def test_frozen_prefix_copy_is_not_trained_and_only_the_preset_changes():
    policy, sampler, learner = setup(True, preset="adapters", sft_weight=1.0)
    frozen_before = {k: v.clone() for k, v in sampler.prefix_model.state_dict().items()}
    before = params(policy)
    learner.update(synthetic_groups(policy, sampler))
    assert all(torch.equal(v, sampler.prefix_model.state_dict()[k])
               for k, v in frozen_before.items())
    after = policy.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed), sorted(changed)[:4]


def test_first_ratio_after_a_hot_swap_is_one_with_the_frozen_prefix(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(),
                           SamplerConfig(stochastic_steps=2, frozen_prefix=True))
    preset = AdapterConfig(preset="adapters+head+norms", rank=2)
    runtime = PolicyRuntime(ckpt, ["pick"], tmp_path / "adapters", preset)
    # the learner, as learner_node builds it, trains v1 from its own groups and writes it
    model, scfg, _ = load_checkpoint(ckpt)
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)
    policy = AdaptedPolicy(model, preset, ["pick"])
    learner = GRPOLearner(policy, sampler, GRPOConfig(**BASE))
    assert learner.update(synthetic_groups(policy, sampler, task="pick")).optimizer_steps
    path, sha = save_adapter_version(policy, tmp_path / "adapters", 1, parent=0,
                                     adapter="pick")
    runtime.apply_swap(runtime.prepare_swap("pick", 1, path, sha))
    cfg = runtime.policy.model.config
    obs = random_obs(cfg, B=4, seed=3)
    gen = torch.Generator().manual_seed(0)
    group = []
    for j in range(4):
        chunk, adapter, version = runtime.act(obs.images[j].numpy(), obs.state[j].numpy(),
                                              obs.instruction[j], gen)
        assert (adapter, version) == ("pick", 1)
        group.append(episode_record(
            [{"images": obs.images[j], "states": obs.state[j], "chains": chunk.chain[0],
              "log_probs": chunk.log_probs[0], "executed": chunk.executed_steps}],
            success=bool(j % 2), episode_id=f"e{j}", group_id="g", task="pick", init_state_id=0,
            adapter_name="pick", adapter_version=1, instruction=obs.instruction[j]))
    stats = learner.update([group])
    assert stats.optimizer_steps and stats.first_ratio_max_dev < 1e-5


def one_chunk_episode(obs, j, a0, success, eid):
    chain = torch.stack([torch.zeros_like(a0), a0])                        # (K'+1, Ta, Da)
    return episode_record([{"images": obs.images[j], "states": obs.state[j], "chains": chain,
                            "log_probs": torch.zeros(1), "executed": a0.shape[0]}],
                          success=success, episode_id=eid, group_id="g", task="pick",
                          init_state_id=0, adapter_name="pick", adapter_version=0,
                          instruction=obs.instruction[j])


def test_failed_episodes_never_enter_the_success_window_and_it_keeps_the_newest():
    cfg = tiny_model().config
    obs = random_obs(cfg, B=3)
    a0 = torch.full((cfg.horizon, cfg.action_dim), 0.5)
    w = SuccessWindow(capacity=2)
    assert w.add([one_chunk_episode(obs, 0, a0, False, "fail")]) == 0 and len(w) == 0
    w.add([one_chunk_episode(obs, j, a0 * j, True, f"ok{j}") for j in range(3)])
    assert len(w) == 2 and [c[3][0, 0].item() for c in w.chunks] == [0.5, 1.0]
    assert w.add([one_chunk_episode(obs, 2, a0, True, "ok2")]) == 0      # each episode once


def test_the_learner_window_holds_only_the_successes_of_its_groups():
    policy, sampler, learner = setup(sft_weight=1.0)
    groups = synthetic_groups(policy, sampler)
    stats = learner.update(groups)
    wins = sum(e.num_chunks for g in groups for e in g if e.success)
    assert stats.success_chunks == wins == len(learner.window("pick")) > 0
    fails = [e for g in groups for e in g if not e.success]
    stored = [c[3] for c in learner.window("pick").chunks]
    assert not any(torch.equal(e.tensors["chains"][0, -1].clamp(-1, 1), s)
                   for e in fails for s in stored)


def test_weight_zero_ignores_the_window_bit_for_bit():
    results = []
    for prefill in (False, True):
        policy, sampler, learner = setup(sft_weight=0.0)
        groups = synthetic_groups(policy, sampler)
        if prefill:      # successes remembered from earlier versions change nothing at weight 0
            learner.remember([e for g in synthetic_groups(policy, sampler, seed=5) for e in g])
        learner.update(groups, generator=torch.Generator().manual_seed(0))
        results.append(params(policy))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_the_success_term_pulls_the_policy_toward_stored_successful_chunks():
    policy, sampler, learner = setup(policy_gradient=False, sft_weight=1.0, epochs=8, lr=3e-3,
                                     minibatch_size=16, micro_batch_size=16)
    cfg = policy.model.config
    obs = random_obs(cfg, B=1, seed=3)
    target = torch.full((cfg.horizon, cfg.action_dim), 0.6)
    target[:, 0] = -0.6
    ep = one_chunk_episode(obs, 0, target, True, "ok")
    many = Observation(obs.images.expand(256, *obs.images.shape[1:]),
                       obs.state.expand(256, -1), obs.instruction * 256)

    def fit():           # the denoising loss of the stored chunk, on fixed noise and timesteps
        with torch.no_grad():
            return denoising_loss(policy.model, learner.train_sched, many,
                                  target.expand(256, -1, -1), torch.Generator().manual_seed(9))

    before = fit()
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        learner.update([[ep, dataclasses.replace(ep, success=False, episode_id="f")]],
                       generator=gen)
    assert fit() < 0.75 * before


def test_filtered_bc_with_no_success_yet_takes_no_step():
    policy, sampler, learner = setup(policy_gradient=False, sft_weight=1.0)
    cfg = policy.model.config
    obs = random_obs(cfg, B=2)
    a0 = torch.zeros((cfg.horizon, cfg.action_dim))
    stats = learner.update([[one_chunk_episode(obs, j, a0, False, f"f{j}") for j in range(2)]])
    assert stats.optimizer_steps == 0


def test_micro_batching_gives_the_same_success_gradient():
    policy, sampler, learner = setup(sft_weight=1.0)
    window = learner.window("pick")
    window.add([e for g in synthetic_groups(policy, sampler, n_groups=3) for e in g])
    batch = window.sample(6, torch.Generator().manual_seed(0))
    grads = []
    for micro in (6, 4, 1):
        learner.cfg = dataclasses.replace(learner.cfg, micro_batch_size=micro)
        learner.optimizer.zero_grad(set_to_none=True)
        learner.success_gradient(batch, {}, torch.Generator().manual_seed(1))
        grads.append([p.grad.clone() for p in policy.trainable_parameters()])
    for other in grads[1:]:
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(grads[0], other))


def test_policy_gradient_off_needs_a_success_weight():
    with pytest.raises(ValueError, match="sft_weight"):
        GRPOConfig(policy_gradient=False, sft_weight=0.0, correction_weight=0.0)


def test_a_restarted_learner_fills_its_window_from_the_newest_stored_successes(tmp_path):
    store = RolloutStore(tmp_path / "rollouts")
    cfg = tiny_model().config
    obs = random_obs(cfg, B=3)
    a0 = torch.zeros((cfg.horizon, cfg.action_dim))
    for v in range(3):                    # versions 0..2, one group each, two wins and a loss
        for j in range(3):
            ep = one_chunk_episode(obs, j, a0 + 0.1 * v, j != 1, f"v{v}e{j}")
            store.write_episode(dataclasses.replace(ep, group_id=f"g{v}", adapter_version=v))
    wins = store.recent_successes("pick", max_chunks=3)
    assert [e.episode_id for e in wins] == ["v1e2", "v2e0", "v2e2"]      # newest, oldest first
    policy, sampler, learner = setup(sft_weight=1.0, success_window=3)
    assert learner.remember(wins) == 3 and len(learner.window("pick")) == 3


def test_the_adopted_trust_region_is_the_default_whatever_a_checkpoint_stored(tmp_path):
    """frozen_prefix is how fine-tuning treats the SFT policy: a checkpoint saved with the old
    behaviour still loads with the adopted recipe's value (nodes and benches alike)."""
    from tinyvla_grpo_ros.core.checkpoint import read_sampler_config
    assert SamplerConfig().frozen_prefix and "frozen_prefix" in SamplerConfig.ADOPTED
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(),
                           SamplerConfig(stochastic_steps=2, frozen_prefix=False))
    _, scfg, _ = load_checkpoint(ckpt)
    assert scfg.frozen_prefix and scfg.stochastic_steps == 2
    assert read_sampler_config(ckpt).frozen_prefix
