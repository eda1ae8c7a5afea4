"""Adapters, GRPO learner and rollout store: invariants that can fail."""
import json

import pytest
import torch
from helpers import random_obs, tiny_model

from tinyvla_grpo_ros.core.adapters import (
    PRESETS,
    AdaptedPolicy,
    AdapterConfig,
    list_versions,
    read_adapter_version,
    save_adapter_version,
)
from tinyvla_grpo_ros.core.config import SamplerConfig
from tinyvla_grpo_ros.core.grpo import GRPOLossConfig, group_advantages, grpo_loss
from tinyvla_grpo_ros.core.learner import GRPOConfig, GRPOLearner
from tinyvla_grpo_ros.core.rollout_store import EpisodeRecord, RolloutStore, StoreError
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.core.synthetic import synthetic_groups


def make_groups(policy, sampler, n_groups=2, G=4, seed=0, version=0):
    return synthetic_groups(policy, sampler, n_groups, G, seed, version)


def setup(preset="adapters", **grpo):
    model = tiny_model()
    sampler = DiffusionSampler(model.config, SamplerConfig(stochastic_steps=2), sft_model=model)
    policy = AdaptedPolicy(model, AdapterConfig(preset=preset, rank=2), ["pick", "push"])
    # the learner's mechanics, not the adopted recipe: no KL stop, warm-up or base scale
    cfg = GRPOConfig(**(dict(group_size=4, lr=1e-2, epochs=1, minibatch_size=64,
                             micro_batch_size=64, target_kl=0.0, warmup_steps=0,
                             base_lr_scale=1.0, device="cpu") | grpo))
    return policy, sampler, GRPOLearner(policy, sampler, cfg)


def snapshot(policy):
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def changed_keys(before, policy):
    after = policy.model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_adapters_update_changes_lora_of_the_task_only_and_base_bit_identical():
    policy, sampler, learner = setup("adapters")
    groups = make_groups(policy, sampler)
    before = snapshot(policy)
    stats = learner.update(groups)
    changed = changed_keys(before, policy)
    assert stats.optimizer_steps == 1 and changed
    assert all(".lora_" in k and ".pick." in k for k in changed), sorted(changed)[:5]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_trains_exactly_its_parameter_set(preset):
    policy, sampler, learner = setup(preset)
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    before = snapshot(policy)
    learner.update(make_groups(policy, sampler))
    changed = changed_keys(before, policy)
    assert changed and changed <= trainable
    heads = {n for n in trainable if n.startswith("head.") and ".lora_" not in n}
    loras = {n for n in trainable if ".lora_" in n}
    assert bool(heads) == (preset != "adapters")
    assert bool(loras) == (preset != "head")
    assert all(".push." not in n for n in loras)          # task b's adapter stays isolated
    if preset == "adapters+last_k_blocks+head":
        assert any(n.startswith("lm.layers.1.") and ".lora_" not in n for n in trainable)
        assert not any(n.startswith("lm.layers.0.") and ".lora_" not in n for n in trainable)
    if preset == "full":
        assert any(n.startswith("vision.") for n in trainable)


def test_ratio_is_one_before_the_first_update():
    policy, sampler, learner = setup("adapters")
    stats = learner.update(make_groups(policy, sampler))
    assert stats.first_ratio_max_dev < 1e-5


def test_one_by_g_and_g_by_one_micro_batches_give_the_same_gradient():
    policy, sampler, learner = setup("adapters+head+norms")
    batch_groups = make_groups(policy, sampler, n_groups=1, G=4)
    from tinyvla_grpo_ros.core.learner import UpdateStats, build_batch
    assert_micro_batches_match(learner, build_batch(batch_groups, learner.cfg, UpdateStats()))


def assert_micro_batches_match(learner, batch):
    """One micro-batch of the whole minibatch and micro-batches of one chunk: same gradient."""
    grads = []
    for micro in (len(batch), 1):
        learner.cfg.micro_batch_size = micro
        learner.minibatch_gradient(batch, {})
        grads.append([p.grad.clone() for p in learner.policy.trainable_parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)   # float32 summation order only
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_target_kl_stops_an_update_that_moves_too_far():
    steps = {}
    for target in (0.0, 1e-4):
        policy, sampler, learner = setup(lr=0.5, target_kl=target, epochs=4, minibatch_size=2,
                                         micro_batch_size=2)       # a step size that blows up
        stats = learner.update(make_groups(policy, sampler, n_groups=2, G=4))
        steps[target] = (stats.optimizer_steps, stats.early_stopped)
    assert steps[0.0] == (16, 0)                     # 4 epochs x 4 minibatches of 2 chunks
    assert steps[1e-4][1] == 1 and 1 <= steps[1e-4][0] < 16


def test_warmup_ramps_the_lr_and_base_tensors_step_at_their_scale():
    policy, sampler, learner = setup("adapters+head+norms", lr=1e-2, warmup_steps=4,
                                     base_lr_scale=0.1, minibatch_size=2, micro_batch_size=2)
    seen = []
    step = learner.optimizer.step
    learner.optimizer.step = lambda: (seen.append([g["lr"] for g in
                                                   learner.optimizer.param_groups]), step())[1]
    learner.update(make_groups(policy, sampler, n_groups=2, G=4))      # 4 minibatches of 2
    lora_lr = [s[0] for s in seen]
    assert lora_lr == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert all(s[1] == pytest.approx(0.1 * s[0]) for s in seen)        # head + norms group
    names = {id(p): n for n, p in policy.model.named_parameters()}
    g_lora, g_base = learner.optimizer.param_groups
    assert all(".lora_" in names[id(p)] for p in g_lora["params"])
    assert not any(".lora_" in names[id(p)] for p in g_base["params"])


def test_each_task_keeps_its_own_optimizer_and_warmup():
    policy, sampler, learner = setup("adapters", warmup_steps=10)
    learner.use_optimizer("pick")
    learner.update(make_groups(policy, sampler))
    pick = learner.optimizer
    assert learner.steps_taken["pick"] == 1
    policy.activate("push")
    learner.use_optimizer("push")                  # another trainable set: its own Adam
    assert learner.optimizer is not pick and learner.steps_taken["push"] == 0
    policy.activate("pick")
    learner.use_optimizer("pick")                  # back: the same moments, warm-up goes on
    assert learner.optimizer is pick
    learner.rebuild_optimizer()                    # after a restore: fresh moments
    assert learner.optimizer is not pick and learner.steps_taken["pick"] == 0


def test_group_with_all_equal_rewards_produces_no_update():
    policy, sampler, learner = setup("adapters")
    groups = make_groups(policy, sampler)
    for g in groups:
        for e in g:
            e.reward = 1.0
    before = snapshot(policy)
    stats = learner.update(groups)
    assert stats.groups_skipped == 2 and stats.skipped_fraction == 1.0
    assert stats.optimizer_steps == 0 and not changed_keys(before, policy)


def test_groups_of_different_versions_are_refused():
    policy, sampler, learner = setup("adapters")
    groups = make_groups(policy, sampler) + make_groups(policy, sampler, n_groups=1, version=3)
    with pytest.raises(ValueError, match="several adapter versions"):
        learner.update(groups)


def test_nonfinite_loss_skips_the_step_and_keeps_weights():
    policy, sampler, learner = setup("adapters")
    groups = make_groups(policy, sampler)
    groups[0][1].tensors["log_probs"][:] = float("nan")
    before = snapshot(policy)
    stats = learner.update(groups)
    assert stats.nonfinite_steps_skipped == 1 and not changed_keys(before, policy)


def test_advantages_normalize_within_the_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert torch.allclose(group_advantages(r), torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    assert group_advantages(torch.ones(4)) is None
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.ones(1))


def test_clipped_surrogate_stops_gradient_past_the_clip():
    cfg = GRPOLossConfig(clip_low=0.2, clip_high=0.28)
    logp_old = torch.zeros(2, 1)
    logp_new = torch.log(torch.tensor([[1.5], [0.5]])).requires_grad_()
    loss, st = grpo_loss(logp_new, logp_old, torch.tensor([1.0, -1.0]), cfg, normalizer=2.0)
    loss.backward()
    assert torch.equal(logp_new.grad, torch.zeros(2, 1)) and st["clip_count"] == 2


def test_kl_needs_the_adapters_preset():
    with pytest.raises(ValueError, match="KL to the reference"):
        setup("head", kl_coef=0.1)
    policy, sampler, learner = setup("adapters", kl_coef=0.1)
    stats = learner.update(make_groups(policy, sampler))
    assert stats.optimizer_steps == 1 and stats.ref_kl >= 0


def test_adapter_export_import_round_trips_bit_exactly_into_a_live_model(tmp_path):
    policy, sampler, learner = setup("adapters")
    learner.update(make_groups(policy, sampler))
    d, sha = save_adapter_version(policy, tmp_path, 1, parent=0, metrics={"loss": 0.5})
    assert list_versions(tmp_path, "pick") == [1]
    state, meta = read_adapter_version(d, root=tmp_path, expected_sha256=sha)
    assert meta["parent_version"] == 0 and meta["preset"] == "adapters"
    assert json.loads((d / "adapter_config.json").read_text())["r"] == 2
    fresh, _, _ = setup("adapters")
    fresh.load_adapter_state(state)
    a, b = policy.adapter_state(), fresh.adapter_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    obs = random_obs(policy.model.config)
    x = sampler.sample(policy.model, obs, torch.Generator().manual_seed(1))
    y = sampler.sample(fresh.model, obs, torch.Generator().manual_seed(1))
    assert torch.equal(x.actions, y.actions)


def test_bad_adapter_files_are_rejected_and_live_weights_unchanged(tmp_path):
    policy, sampler, learner = setup("adapters")
    learner.update(make_groups(policy, sampler))
    d, sha = save_adapter_version(policy, tmp_path, 1, parent=0)
    live, _, _ = setup("adapters")
    before = snapshot(live)
    weights = d / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])                              # truncated
    with pytest.raises(ValueError, match="sha256 mismatch"):
        read_adapter_version(d, root=tmp_path)
    with pytest.raises(ValueError, match="outside the adapter root"):
        read_adapter_version(d, root=tmp_path / "elsewhere")
    state = policy.adapter_state()
    wrong = {k: (v[:1] if i == 0 else v) for i, (k, v) in enumerate(state.items())}
    with pytest.raises(ValueError, match="shape mismatch"):
        live.load_adapter_state(wrong)
    with pytest.raises(ValueError, match="missing tensors"):
        live.load_adapter_state(dict(list(state.items())[1:]))
    with pytest.raises(ValueError, match="non-finite"):
        live.load_adapter_state({k: v * float("nan") for k, v in state.items()})
    assert not changed_keys(before, live)


def _record(ep, group="g0", version=0, task="a"):
    return EpisodeRecord(episode_id=ep, group_id=group, task=task, init_state_id=0,
                         adapter_name=task, adapter_version=version, instruction="x", reward=1.0,
                         success=True, tensors={
                             "images": torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8),
                             "states": torch.zeros(2, 3), "chains": torch.randn(2, 3, 4, 2),
                             "log_probs": torch.randn(2, 2), "executed": torch.tensor([4, 4])})


def test_store_round_trips_and_never_mixes_versions(tmp_path):
    store = RolloutStore(tmp_path)
    rec = _record("e0")
    store.write_episode(rec)
    back = store.read_group("a", "g0")[0]
    assert torch.equal(back.tensors["chains"], rec.tensors["chains"]) and back.reward == 1.0
    with pytest.raises(StoreError, match="never mixes versions"):
        store.write_episode(_record("e1", version=1))
    with pytest.raises(StoreError, match="already stored"):
        store.write_episode(_record("e0"))
    with pytest.raises(StoreError, match="invalid episode id"):
        store.write_episode(_record("../evil"))
    assert store.episode_ids("a", "g0") == ["e0"]


def test_store_ignores_and_recovers_half_written_episodes(tmp_path):
    store = RolloutStore(tmp_path)
    store.write_episode(_record("e0"))
    crashed = tmp_path / "a" / "g0" / ".tmp-e1-abc"
    crashed.mkdir()
    (crashed / "chunks.safetensors").write_bytes(b"partial")
    assert store.episode_ids("a", "g0") == ["e0"]
    assert RolloutStore(tmp_path).episode_ids("a", "g0") == ["e0"] and not crashed.exists()


def test_store_out_of_space_gives_a_clear_error_and_no_episode(tmp_path, monkeypatch):
    store = RolloutStore(tmp_path)
    store.write_episode(_record("e0"))
    import tinyvla_grpo_ros.core.atomic_io as aio

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(aio, "write_safetensors", full)
    with pytest.raises(StoreError, match="No space left"):
        store.write_episode(_record("e1"))
    assert store.episode_ids("a", "g0") == ["e0"]
    assert not list((tmp_path / "a" / "g0").glob(".tmp-*"))


def test_store_prunes_old_groups(tmp_path):
    store = RolloutStore(tmp_path, keep_groups=2)
    for g in range(4):
        store.write_episode(_record("e0", group=f"g{g}"))
    assert store.groups("a") == ["g2", "g3"]


def test_an_update_asked_to_stop_raises_between_minibatches():
    from tinyvla_grpo_ros.core.learner import UpdateCancelled
    policy, sampler, learner = setup("adapters", minibatch_size=2, micro_batch_size=2)
    groups = make_groups(policy, sampler)
    asked = []

    def stop_after_two():
        asked.append(1)
        return len(asked) > 2
    with pytest.raises(UpdateCancelled, match="after 2 step"):
        learner.update(groups, should_stop=stop_after_two)
    assert learner.update(groups, should_stop=lambda: False).optimizer_steps == 4
