"""Stochastic sampler: re-scoring gives ratio 1, seeds reproduce, parity with diffusers' step."""
import pytest
import torch
from helpers import random_obs, tiny_model

from tinyvla_grpo_ros.core.config import SamplerConfig
from tinyvla_grpo_ros.core.sampler import DiffusionSampler, build_scheduler


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
@pytest.mark.parametrize("k_prime", [1, 3, 10])
def test_rescoring_a_fresh_chain_gives_ratio_one(scheduler, k_prime):
    model = tiny_model()
    obs = random_obs(model.config)
    sampler = DiffusionSampler(model.config, SamplerConfig(scheduler=scheduler,
                                                           stochastic_steps=k_prime),
                               sft_model=model)
    chunk = sampler.sample(model, obs, generator=torch.Generator().manual_seed(0))
    assert chunk.chain.shape == (3, k_prime + 1, 4, 2)
    assert chunk.log_probs.shape == (3, k_prime)
    with torch.no_grad():
        per_step = sampler.chain_log_prob_per_step(model, obs, chunk.chain)
        batched = sampler.chain_log_prob(model, obs, chunk.chain)
    # Same kernels and batch as sampling: bit-identical.
    assert torch.equal(per_step, chunk.log_probs)
    # One batched forward over B*K' rows: float32 kernels differ in the last bits only.
    ratio = torch.exp(batched - chunk.log_probs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), ratio


def test_same_seed_same_chunk_and_different_seed_different_chunk():
    model = tiny_model()
    obs = random_obs(model.config)
    sampler = DiffusionSampler(model.config, SamplerConfig(), sft_model=model)
    a = sampler.sample(model, obs, generator=torch.Generator().manual_seed(7))
    b = sampler.sample(model, obs, generator=torch.Generator().manual_seed(7))
    c = sampler.sample(model, obs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.log_probs, b.log_probs)
    assert not torch.equal(a.actions, c.actions)


def test_deterministic_sampling_ignores_noise_after_the_start():
    model = tiny_model()
    obs = random_obs(model.config)
    sampler = DiffusionSampler(model.config, SamplerConfig(stochastic_steps=3), sft_model=model)
    x = [sampler.sample(model, obs, torch.Generator().manual_seed(3), deterministic=True)
         for _ in range(2)]
    assert torch.equal(x[0].actions, x[1].actions)
    assert x[0].log_probs.shape == (3, 0)


def test_init_noise_scale_zero_makes_the_mean_chain_independent_of_the_seed():
    """x_K = 0: evaluation no longer depends on the generator, and every bit of a stochastic
    rollout's randomness is in the scored steps (which still re-score to ratio 1)."""
    model = tiny_model()
    obs = random_obs(model.config)
    sampler = DiffusionSampler(model.config, SamplerConfig(init_noise_scale=0.0), sft_model=model)
    det = [sampler.sample(model, obs, torch.Generator().manual_seed(s), deterministic=True)
           for s in (1, 2)]
    assert torch.equal(det[0].actions, det[1].actions)
    a, b = (sampler.sample(model, obs, torch.Generator().manual_seed(s)) for s in (1, 2))
    assert not torch.equal(a.actions, b.actions)
    with torch.no_grad():
        ratio = torch.exp(sampler.chain_log_prob(model, obs, a.chain) - a.log_probs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)


def test_init_noise_scale_scales_the_starting_sample():
    model = tiny_model()
    obs = random_obs(model.config)
    cfg = SamplerConfig(stochastic_steps=10)          # chain[:, 0] is x_K itself
    full = DiffusionSampler(model.config, cfg, sft_model=model).sample(
        model, obs, torch.Generator().manual_seed(4))
    half = DiffusionSampler(model.config, SamplerConfig(stochastic_steps=10, init_noise_scale=0.5),
                            sft_model=model).sample(model, obs, torch.Generator().manual_seed(4))
    assert torch.allclose(half.chain[:, 0], 0.5 * full.chain[:, 0])


def test_given_init_noise_replaces_the_draw_of_x_k():
    model = tiny_model()
    obs = random_obs(model.config)
    sampler = DiffusionSampler(model.config, SamplerConfig(stochastic_steps=10), sft_model=model)
    z = torch.randn(3, model.config.horizon, model.config.action_dim,
                    generator=torch.Generator().manual_seed(5))
    drawn = sampler.sample(model, obs, torch.Generator().manual_seed(5))
    given = sampler.sample(model, obs, torch.Generator().manual_seed(9), init_noise=z)
    assert torch.equal(given.chain[:, 0], z) and torch.equal(drawn.chain[:, 0], z)
    # the scored steps still draw from the generator: same x_K, different rollouts
    assert not torch.equal(given.actions, drawn.actions)
    with pytest.raises(ValueError, match="init_noise must have shape"):
        sampler.sample(model, obs, init_noise=z[:2])


@pytest.mark.parametrize("scale", [-0.1, 1.5])
def test_init_noise_scale_outside_zero_one_is_refused(scale):
    with pytest.raises(ValueError, match="init_noise_scale"):
        SamplerConfig(init_noise_scale=scale)


def test_only_executed_prefix_is_scored():
    model = tiny_model()
    obs = random_obs(model.config)
    sampler = DiffusionSampler(model.config, SamplerConfig(executed_steps=2), sft_model=model)
    chunk = sampler.sample(model, obs, generator=torch.Generator().manual_seed(0))
    changed = chunk.chain.clone()
    changed[:, -1, 2:] += 5.0                 # final actions past the executed prefix
    with torch.no_grad():
        lp = sampler.chain_log_prob_per_step(model, obs, changed)
    assert torch.equal(lp, chunk.log_probs)
    changed[:, -1, :2] += 5.0                 # inside the prefix: the final step's score drops
    with torch.no_grad():
        lp = sampler.chain_log_prob_per_step(model, obs, changed)
    assert (lp[:, -1] < chunk.log_probs[:, -1]).all()


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_step_matches_diffusers_scheduler_without_floors(scheduler):
    """With floors off and no noise clip, one stochastic step equals diffusers' own step()."""
    model = tiny_model()
    cfg = SamplerConfig(scheduler=scheduler, stochastic_steps=10, min_sampling_std=0.0,
                        min_logprob_std=1e-6, noise_clip=0.0, eta=1.0)
    sampler = DiffusionSampler(model.config, cfg, sft_model=model)
    ref = build_scheduler(model.config, scheduler)
    ref.set_timesteps(cfg.num_inference_steps)
    x = torch.randn(2, 4, 2)
    eps = torch.randn(2, 4, 2)
    for i in [0, 4, 8]:
        t = int(sampler.timesteps[i])
        mean, sigma = sampler.step_mean_std(x, eps, torch.full((2,), i), stochastic=True)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        if scheduler == "ddim":
            expected = ref.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        else:
            expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        assert torch.allclose(mean + sigma * z, expected, atol=1e-5), (scheduler, i)


def test_config_rejects_broken_values_with_the_field_name():
    with pytest.raises(ValueError, match="stochastic_steps"):
        SamplerConfig(num_inference_steps=5, stochastic_steps=6)
    with pytest.raises(ValueError, match="min_logprob_std"):
        SamplerConfig(min_logprob_std=0.0)
    with pytest.raises(ValueError, match="scheduler"):
        SamplerConfig(scheduler="euler")
