"""Learner options: the `elbo` ratio (FPO-style denoising surrogate) and the scale of negative
advantages: invariants that can fail."""
import pytest
import torch
from helpers import random_obs
from test_adapters_learner_store import assert_micro_batches_match, make_groups, setup

from tinyvla_grpo_ros.core.learner import GRPOConfig, UpdateStats, build_batch
from tinyvla_grpo_ros.core.sampler import build_scheduler


def test_elbo_surrogate_matches_the_diffusers_forward_process_term_by_term():
    policy, sampler, _ = setup("adapters", ratio="elbo")
    model = policy.model
    cfg = model.config
    obs = random_obs(cfg, B=3, seed=1)
    gen = torch.Generator().manual_seed(0)
    x0 = sampler.sample(model, obs, generator=gen).chain[:, -1]
    t = torch.randint(0, cfg.num_train_timesteps, (3, 5), generator=gen)
    noise = torch.randn((3, 5, cfg.horizon, cfg.action_dim), generator=gen)
    with torch.no_grad():
        got = sampler.elbo_log_likelihood(model, obs, x0, t, noise, n_exec=2)
        sched, cond = build_scheduler(cfg, sampler.cfg.scheduler), model.encode(obs)
        want = torch.zeros(3)
        for b in range(3):
            for m in range(5):
                x_t = sched.add_noise(x0[b:b + 1], noise[b, m:m + 1], t[b, m:m + 1])
                eps = model(x_t, t[b, m:m + 1], cond[b:b + 1])
                want[b] += -0.5 * ((eps - noise[b, m:m + 1])[:, :2] ** 2).sum() / 5
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_elbo_ratio_is_one_before_the_first_step_and_the_update_moves_weights():
    policy, sampler, learner = setup("adapters+head+norms", ratio="elbo", elbo_samples=3)
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    stats = learner.update(make_groups(policy, sampler))
    assert stats.first_ratio_max_dev == 0.0
    assert stats.optimizer_steps == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.trainable_parameters()))


def test_elbo_micro_batches_give_the_same_gradient():
    policy, sampler, learner = setup("adapters+head+norms", ratio="elbo")
    batch = build_batch(make_groups(policy, sampler, n_groups=1, G=4), learner.cfg,
                        UpdateStats())
    batch = learner.with_elbo_draws(batch, torch.Generator().manual_seed(0))
    assert batch.logp_old.shape == (4, 1) and batch.elbo_t.shape == (4, learner.cfg.elbo_samples)
    assert_micro_batches_match(learner, batch)


def test_an_elbo_step_raises_the_surrogate_of_the_better_chunks_and_lowers_the_worse():
    policy, sampler, learner = setup("head", ratio="elbo", elbo_samples=8, lr=1e-3)
    groups = make_groups(policy, sampler, n_groups=1, G=4)       # rewards 0, 1, 0, 1
    batch = learner.with_elbo_draws(build_batch(groups, learner.cfg, UpdateStats()),
                                    torch.Generator().manual_seed(0))
    learner.minibatch_gradient(batch, {})
    learner.set_lr()
    learner.optimizer.step()
    with torch.no_grad():
        change = learner._logp(batch)[:, 0] - batch.logp_old[:, 0]
    assert (change[batch.advantages > 0] > 0).all(), change
    assert (change[batch.advantages < 0] < 0).all(), change


def test_unknown_ratio_and_zero_draws_are_refused():
    with pytest.raises(ValueError, match="ratio"):
        GRPOConfig(ratio="dpo")
    with pytest.raises(ValueError, match="elbo_samples"):
        GRPOConfig(ratio="elbo", elbo_samples=0)


def test_negative_advantage_scale_shrinks_only_the_worse_episodes_advantages():
    policy, sampler, _ = setup("adapters")
    groups = make_groups(policy, sampler, n_groups=1, G=4)                 # rewards 0, 1, 0, 1
    adv = {}
    for scale in (1.0, 0.25, 0.0):
        cfg = GRPOConfig(group_size=4, negative_advantage_scale=scale, device="cpu")
        adv[scale] = build_batch(groups, cfg, UpdateStats()).advantages
    pos = adv[1.0] > 0
    assert torch.equal(adv[0.25][pos], adv[1.0][pos]) and torch.equal(adv[0.0][pos], adv[1.0][pos])
    torch.testing.assert_close(adv[0.25][~pos], 0.25 * adv[1.0][~pos])
    assert (adv[0.0][~pos] == 0).all() and (adv[1.0][~pos] < 0).all()
    with pytest.raises(ValueError, match="negative_advantage_scale"):
        GRPOConfig(negative_advantage_scale=-0.5)


def test_elbo_step_size_guard_watches_the_sampling_chain():
    steps = {}
    for target in (0.0, 1e-4):
        policy, sampler, learner = setup(ratio="elbo", lr=0.5, target_kl=target, epochs=4,
                                         minibatch_size=2, micro_batch_size=2)
        stats = learner.update(make_groups(policy, sampler, n_groups=2, G=4))
        steps[target] = (stats.optimizer_steps, stats.early_stopped)
        if target == 0.0:
            assert stats.approx_kl > 0                # the chain moved, and it is reported
    assert steps[0.0] == (16, 0)
    assert steps[1e-4][1] == 1 and 1 <= steps[1e-4][0] < 16
    # what the guard reads after a step is the chain's KL, not the surrogate's
    policy, sampler, learner = setup(ratio="elbo", lr=0.05)
    batch = learner.with_elbo_draws(build_batch(make_groups(policy, sampler), learner.cfg,
                                                UpdateStats()), torch.Generator().manual_seed(0))
    learner.minibatch_gradient(batch, {})
    learner.set_lr()
    learner.optimizer.step()
    acc = {}
    learner.minibatch_gradient(batch, acc)
    with torch.no_grad():
        d = learner._logp(batch, chain=True) - batch.chain_logp_old
        s = learner._logp(batch) - batch.logp_old
    chain_kl = ((d.exp() - 1) - d).mean().item()
    surrogate_kl = ((s.exp() - 1) - s).mean().item()
    assert acc["kl_sum"] / acc["kl_terms"] == pytest.approx(chain_kl, rel=1e-4)
    assert abs(chain_kl - surrogate_kl) > 0.1 * chain_kl
