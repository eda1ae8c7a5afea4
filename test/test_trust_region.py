"""The exact trust region (frozen_prefix): the unscored denoising steps run a frozen SFT copy."""
import pytest
import torch
from helpers import random_obs, tiny_model

from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig, save_adapter_version
from tinyvla_grpo_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tinyvla_grpo_ros.core.config import GRPOConfig, SamplerConfig
from tinyvla_grpo_ros.core.learner import GRPOLearner
from tinyvla_grpo_ros.core.policy_runtime import PolicyRuntime
from tinyvla_grpo_ros.core.rollout_store import episode_record
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
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
    policy, sampler, learner = setup(True, preset="adapters")
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
