"""The noise prior: x_K ~ N(mu(c), s^2) with a learned mean, scored and trained like a step."""
import pytest
import torch
from helpers import random_obs, tiny_model
from test_adapters_learner_store import changed_keys, make_groups, snapshot

from tinyvla_grpo_ros.core.adapters import (
    AdaptedPolicy,
    AdapterConfig,
    read_adapter_version,
    save_adapter_version,
)
from tinyvla_grpo_ros.core.config import SamplerConfig
from tinyvla_grpo_ros.core.learner import GRPOConfig, GRPOLearner
from tinyvla_grpo_ros.core.sampler import DiffusionSampler


def setup(preset="adapters", noise_prior=True, scfg=None, **grpo):
    policy = AdaptedPolicy(tiny_model(), AdapterConfig(preset=preset, rank=2,
                                                       noise_prior=noise_prior), ["pick"])
    sampler = DiffusionSampler(policy.model.config, scfg or SamplerConfig(stochastic_steps=2))
    cfg = GRPOConfig(**(dict(group_size=4, lr=1e-2, epochs=1, minibatch_size=64,
                             micro_batch_size=64, noise_prior_lr_scale=1.0, device="cpu")
                        | grpo))
    return policy, sampler, GRPOLearner(policy, sampler, cfg)


def test_a_fresh_noise_prior_samples_exactly_what_the_policy_without_it_samples():
    with_p, sampler, _ = setup()
    without, _, _ = setup(noise_prior=False)
    obs = random_obs(with_p.model.config)
    a = sampler.sample(with_p.model, obs, torch.Generator().manual_seed(3))
    b = sampler.sample(without.model, obs, torch.Generator().manual_seed(3))
    assert torch.equal(a.actions, b.actions)
    assert a.chain.shape[1] == b.chain.shape[1] + 1 and a.log_probs.shape[1] == 3
    assert torch.equal(a.chain[:, 1:], b.chain) and torch.equal(a.log_probs[:, 1:], b.log_probs)
    Ta, Da = a.chain.shape[2:]          # x_K ~ N(0, I) scored over all of (Ta, Da)
    want = torch.distributions.Normal(0.0, 1.0).log_prob(a.chain[:, 0]).sum(dim=(1, 2))
    assert torch.allclose(a.log_probs[:, 0], want, atol=1e-4) and Ta * Da > 0


def test_x_k_is_rescored_exactly_batched_and_per_step_and_the_first_ratio_is_one():
    policy, sampler, learner = setup()
    obs = random_obs(policy.model.config)
    with torch.no_grad():
        policy.model.noise_prior.bias.fill_(0.3)                 # a prior that moved
        chunk = sampler.sample(policy.model, obs, torch.Generator().manual_seed(1))
        batched = sampler.chain_log_prob(policy.model, obs, chunk.chain)
        per_step = sampler.chain_log_prob_per_step(policy.model, obs, chunk.chain)
    assert torch.allclose(batched, chunk.log_probs, atol=1e-4)
    assert torch.allclose(per_step, batched, atol=1e-4)
    stats = learner.update(make_groups(policy, sampler))
    assert stats.optimizer_steps == 1 and stats.first_ratio_max_dev < 1e-5


def test_evaluation_starts_from_the_prior_mean_plus_the_given_noise():
    policy, sampler, _ = setup()
    obs = random_obs(policy.model.config, B=2)
    z = torch.randn(2, *sampler_shape(policy))
    base = sampler.sample(policy.model, obs, deterministic=True, init_noise=z)
    with torch.no_grad():
        policy.model.noise_prior.bias.fill_(0.5)
    shifted = sampler.sample(policy.model, obs, deterministic=True, init_noise=z)
    again = sampler.sample(policy.model, obs, deterministic=True, init_noise=z - 0.5)
    assert not torch.equal(base.actions, shifted.actions)
    assert torch.allclose(again.actions, base.actions, atol=1e-5)
    assert base.chain.shape[1] == 3 and base.log_probs.shape[1] == 0   # evaluation: unscored


def sampler_shape(policy):
    cfg = policy.model.config
    return cfg.horizon, cfg.action_dim


@pytest.mark.parametrize("preset", ["adapters", "head"])
def test_grpo_moves_the_prior_mean_toward_the_x_k_of_the_successful_rollouts(preset):
    policy, sampler, learner = setup(preset)
    groups = make_groups(policy, sampler, n_groups=4, G=8)
    for g in groups:                        # success when x_K leans positive on action dim 0
        for ep in g:
            ep.reward = float(ep.tensors["chains"][0, 0, :, 0].mean() > 0)
    assert any(len({e.reward for e in g}) > 1 for g in groups)
    before = snapshot(policy)
    first = learner.update(groups)
    assert first.prior_mean_rms == 0.0                 # one step, measured before it
    changed = changed_keys(before, policy)
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert {"noise_prior.weight", "noise_prior.bias"} <= changed <= trainable
    obs = random_obs(policy.model.config, B=8, seed=11)
    with torch.no_grad():
        mu = policy.model.init_noise_mean(policy.model.encode(obs))
    assert mu[..., 0].mean() > 0.5 * mu.abs().mean() > 0
    assert learner.update(groups).prior_mean_rms > 0   # the mean it starts from has moved


def test_the_prior_travels_with_its_adapter_version_and_a_policy_without_one_refuses_it(tmp_path):
    policy, sampler, learner = setup()
    learner.update(make_groups(policy, sampler))
    d, sha = save_adapter_version(policy, tmp_path, 1, parent=0)
    state, meta = read_adapter_version(d, root=tmp_path, expected_sha256=sha)
    assert {"noise_prior.weight", "noise_prior.bias"} <= state.keys()
    fresh, _, _ = setup()
    fresh.load_adapter_state(state)
    assert torch.equal(fresh.model.noise_prior.weight, policy.model.noise_prior.weight)
    plain, _, _ = setup(noise_prior=False)
    kept = snapshot(plain)
    with pytest.raises(ValueError, match="noise_prior"):
        plain.load_adapter_state(state)
    assert not changed_keys(kept, plain)


def test_settings_that_cannot_train_a_prior_are_refused():
    with pytest.raises(ValueError, match="noise prior"):
        setup(kl_coef=0.1)                  # the reference would carry the prior
    with pytest.raises(ValueError, match="elbo"):
        setup("head", ratio="elbo")
    policy, sampler, _ = setup(scfg=SamplerConfig(stochastic_steps=2, init_noise_scale=0.0))
    with pytest.raises(ValueError, match="init_noise_scale"):
        sampler.sample(policy.model, random_obs(policy.model.config))
    with pytest.raises(ValueError, match="noise_prior_lr_scale"):
        GRPOConfig(noise_prior_lr_scale=0.0)
