"""Operator corrections: the simulated operator's rule, corrected chunks, how they are stored,
counted and learned from."""
import time

import numpy as np
import pytest
import torch
from helpers import random_obs, tiny_model

from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig
from tinyvla_grpo_ros.core.config import GRPOConfig, SamplerConfig
from tinyvla_grpo_ros.core.correction_window import CorrectionWindow
from tinyvla_grpo_ros.core.corrections import OperatorConfig, SimulatedOperator, correction_chunks
from tinyvla_grpo_ros.core.learner import GRPOLearner, UpdateStats, build_batch
from tinyvla_grpo_ros.core.rollout_store import RolloutStore, StoreError, episode_record
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.core.synthetic import synthetic_groups

RIGHT, LEFT = np.array([1.0, 0, 0, 0]), np.array([-1.0, 0, 0, 0])


def test_the_operator_takes_over_after_n_disagreeing_steps_and_hands_back_after_m():
    op = SimulatedOperator(OperatorConfig(disagree_steps=3, takeover_steps=4, budget_steps=100))
    assert [op.step(LEFT, RIGHT) for _ in range(3)] == [False, False, True]
    assert [op.step(None, RIGHT) for _ in range(4)] == [True, True, True, False]
    assert not op.in_control and op.used == 4 and op.segments == 1
    assert not op.step(RIGHT, RIGHT)                       # agreeing: the policy keeps driving


def test_agreement_resets_the_count_and_the_budget_caps_a_takeover():
    op = SimulatedOperator(OperatorConfig(disagree_steps=2, takeover_steps=50, budget_steps=3))
    assert [op.step(a, RIGHT) for a in (LEFT, RIGHT, LEFT)] == [False, False, False]
    assert op.step(LEFT, RIGHT)
    assert [op.step(None, RIGHT) for _ in range(3)] == [True, True, False]   # 3 steps in all
    assert [op.step(LEFT, RIGHT) for _ in range(5)] == [False] * 5           # budget spent
    still = SimulatedOperator(OperatorConfig(disagree_steps=1, min_motion=0.5))
    assert not still.step(LEFT, RIGHT * 0.1)             # the expert barely moves: no judgement


def test_corrected_segments_become_masked_chunks_of_the_policy_horizon():
    img, state = np.zeros((1, 4, 4, 3), np.uint8), np.zeros(3, np.float32)
    steps = [{"segment": 1, "action": np.full(2, float(i)), "obs": (img, state) if i in (0, 2)
              else None} for i in range(3)] + \
            [{"segment": 2, "action": np.full(2, 9.0), "obs": (img, state)}]
    ch = correction_chunks(steps, horizon=4, normalize=lambda a: a / 10)
    assert ch["op_actions"].shape == (3, 4, 2)
    assert ch["op_executed"].tolist() == [3, 1, 1]        # cut at each segment's end
    assert ch["op_actions"][0, :3, 0].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert ch["op_actions"][2, 0, 0].item() == pytest.approx(0.9)  # never the other segment's
    assert correction_chunks([], 4, lambda a: a) == {}


def corrected_episode(policy, sampler, eid="c0", success=True):
    g = synthetic_groups(policy, sampler, 1, 2, task="pick")[0][0]
    cfg = policy.model.config
    obs = random_obs(cfg, B=2, seed=5)
    corr = {"op_images": obs.images, "op_states": obs.state,
            "op_actions": torch.full((2, cfg.horizon, cfg.action_dim), 0.3),
            "op_executed": torch.tensor([cfg.horizon, 1])}
    frames = [{k: g.tensors[k][0] for k in ("images", "states", "chains", "log_probs")} |
              {"executed": int(g.tensors["executed"][0])}]
    return episode_record(frames, success=success, corrections=corr, corrected_steps=5,
                          episode_id=eid, group_id="g0", task="pick", init_state_id=0,
                          adapter_name="pick", adapter_version=0, instruction="pick")


def setup(**grpo):
    model = tiny_model()
    sampler = DiffusionSampler(model.config, SamplerConfig(stochastic_steps=2), sft_model=model)
    policy = AdaptedPolicy(model, AdapterConfig(preset="adapters", rank=2), ["pick"])
    cfg = dict(group_size=2, lr=1e-2, epochs=1, minibatch_size=8, micro_batch_size=8,
               target_kl=0.0, warmup_steps=0, device="cpu") | grpo
    return policy, sampler, GRPOLearner(policy, sampler, GRPOConfig(**cfg))


def test_a_corrected_episode_is_a_failure_of_the_policy_and_is_stored_with_its_corrections(
        tmp_path):
    policy, sampler, _ = setup()
    ep = corrected_episode(policy, sampler)
    assert ep.success and ep.reward == 0.0 and ep.corrected_steps == 5
    store = RolloutStore(tmp_path / "r")
    store.write_episode(ep)
    back = store.read_group("pick", "g0")[0]
    assert back.corrected_steps == 5 and torch.equal(back.tensors["op_actions"],
                                                     ep.tensors["op_actions"])
    bad = dict(back.tensors)
    bad.pop("op_states")                       # all or none of the operator's tensors
    from tinyvla_grpo_ros.core.atomic_io import write_safetensors
    write_safetensors(back.path / "chunks.safetensors", bad)
    with pytest.raises(StoreError, match="op_"):
        store.read_episode(back.path)


def test_operator_chunks_never_enter_the_ratio_but_train_with_their_weight():
    policy, sampler, learner = setup(correction_weight=1.0)
    ep = corrected_episode(policy, sampler)
    other = synthetic_groups(policy, sampler, 1, 2, seed=3, task="pick")[0][1]   # a success
    stats = UpdateStats()
    batch = build_batch([[ep, other]], learner.cfg, stats)
    assert len(batch) == ep.num_chunks + other.num_chunks          # the policy's chunks only
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    st = learner.update([[ep, other]], generator=torch.Generator().manual_seed(0))
    assert st.correction_chunks == 2 and st.correction_loss > 0 and st.optimizer_steps == 1
    assert any(not torch.equal(before[k], v) for k, v in policy.model.state_dict().items())


def test_correction_weight_zero_leaves_the_update_as_it_was():
    out = []
    for w in (0.0, None):
        policy, sampler, learner = setup(correction_weight=w if w is not None else 0.0)
        plain = synthetic_groups(policy, sampler, 1, 2, task="pick")
        if w is None:      # the same groups, one episode with corrections added: ignored at 0
            plain[0][0].tensors.update({k: v for k, v in corrected_episode(
                policy, sampler).tensors.items() if k.startswith("op_")})
        learner.update(plain, generator=torch.Generator().manual_seed(0))
        out.append({k: v.clone() for k, v in policy.model.state_dict().items()})
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


def test_the_episode_manager_stores_the_operators_chunks_as_corrections_of_a_failed_episode(
        tmp_path):
    """policy_node's operator chunks (takeover) reach the store as corrected chunks: each
    segment of consecutive chunk indices cut at its decision boundaries, the policy's own
    chunks untouched, and the episode a failure of the policy although it succeeded."""
    from test_episode_machine import frame, make

    from tinyvla_grpo_ros.core import episode_machine as em
    m, port = make(tmp_path, max_chunks=10)
    m.set_version(0)
    m.step()
    m.reset_finished(True, "")
    eid = m.ep.episode_id
    op = lambda i, v: {"chunk_index": i, "images": np.full((1, 4, 4, 3), i, np.uint8),  # noqa
                       "states": np.full(3, i, np.float32), "executed": 2,
                       "actions": np.full((4, 2), v, np.float32)}
    assert m.add_chunk(eid, frame(), "reach-v3", 0, "reach")                   # chunk 0
    assert m.add_operator_chunk(eid, op(1, 0.1)) and m.add_operator_chunk(eid, op(2, 0.2))
    assert m.add_chunk(eid, frame(), "reach-v3", 0, "reach")                   # chunk 3
    assert m.add_operator_chunk(eid, op(4, -0.5))
    assert not m.add_operator_chunk("another-episode", op(5, 0.0))
    m.sim_succeeded(True)
    m.step(time.monotonic())
    assert port.outcomes[-1]["success"] and port.outcomes[-1]["corrected_steps"] == 6
    (rec,) = m.store.read_group("reach-v3", port.outcomes[-1]["group_id"])
    assert rec.reward == 0.0 and rec.corrected_steps == 6
    assert rec.tensors["chains"].shape[0] == 2                     # the policy's two chunks
    t = rec.tensors
    assert t["op_executed"].tolist() == [4, 2, 2]     # 1-2: one segment; 2 starts a boundary
    assert t["op_states"][:, 0].tolist() == [1.0, 2.0, 4.0]
    assert torch.allclose(t["op_actions"][0, :, 0], torch.tensor([0.1, 0.1, 0.2, 0.2]))
    assert torch.allclose(t["op_actions"][2, :2, 0], torch.tensor([-0.5, -0.5]))
    assert m.state != em.RUNNING


def op_episode(obs, j, target, eid, version=0, group="g"):
    """A failed one-chunk episode whose one corrected chunk is `target` at observation j."""
    ep_chain = torch.stack([torch.zeros_like(target), target])             # (K'+1, Ta, Da)
    corr = {"op_images": obs.images[j:j + 1], "op_states": obs.state[j:j + 1],
            "op_actions": target[None], "op_executed": torch.tensor([target.shape[0]])}
    return episode_record([{"images": obs.images[j], "states": obs.state[j], "chains": ep_chain,
                            "log_probs": torch.zeros(1), "executed": target.shape[0]}],
                          success=False, corrections=corr, corrected_steps=target.shape[0],
                          episode_id=eid, group_id=group, task="pick", init_state_id=0,
                          adapter_name="pick", adapter_version=version,
                          instruction=obs.instruction[j])


def test_the_correction_term_pulls_the_policy_toward_the_operators_chunks():
    from tinyvla_grpo_ros.core.model import Observation
    from tinyvla_grpo_ros.core.sft import denoising_loss
    policy, sampler, learner = setup(correction_weight=1.0, epochs=8, lr=3e-3,
                                     minibatch_size=16, micro_batch_size=16)
    cfg = policy.model.config
    obs = random_obs(cfg, B=1, seed=3)
    target = torch.full((cfg.horizon, cfg.action_dim), 0.6)
    target[:, 0] = -0.6
    ep = op_episode(obs, 0, target, "c")
    many = Observation(obs.images.expand(256, *obs.images.shape[1:]),
                       obs.state.expand(256, -1), obs.instruction * 256)

    def fit():           # the denoising loss of the corrected chunk, on fixed noise and steps
        with torch.no_grad():
            return denoising_loss(policy.model, learner.train_sched, many,
                                  target.expand(256, -1, -1), torch.Generator().manual_seed(9))

    before = fit()
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):                       # both failures: no GRPO signal, corrections only
        learner.update([[ep, op_episode(obs, 0, target, "d")]], generator=gen)
    assert fit() < 0.75 * before


def test_micro_batching_gives_the_same_correction_gradient():
    import dataclasses
    policy, sampler, learner = setup(correction_weight=1.0)
    cfg = policy.model.config
    obs = random_obs(cfg, B=3, seed=2)
    window = learner.corrections("pick")
    window.add([op_episode(obs, j, torch.rand(cfg.horizon, cfg.action_dim) * 2 - 1, f"e{j}")
                for j in range(3)])
    batch = window.sample(6, torch.Generator().manual_seed(0))
    grads = []
    for micro in (6, 4, 1):
        learner.cfg = dataclasses.replace(learner.cfg, micro_batch_size=micro)
        learner.optimizer.zero_grad(set_to_none=True)
        learner.correction_gradient(batch, {}, torch.Generator().manual_seed(1))
        grads.append([p.grad.clone() for p in policy.trainable_parameters()])
    for other in grads[1:]:
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(grads[0], other))


def test_a_restarted_learner_fills_its_window_from_the_newest_stored_corrections(tmp_path):
    import dataclasses
    store = RolloutStore(tmp_path / "rollouts")
    policy, sampler, learner = setup(correction_window=3)
    cfg = policy.model.config
    obs = random_obs(cfg, B=3)
    a0 = torch.zeros((cfg.horizon, cfg.action_dim))
    plain = synthetic_groups(policy, sampler, 1, 2, task="pick")[0][0]
    for v in range(3):            # versions 0..2, one group each: two corrected, one not
        for j in range(3):
            ep = op_episode(obs, j, a0 + 0.1 * v, f"v{v}e{j}", version=v, group=f"g{v}")
            if j == 1:
                ep = dataclasses.replace(plain, episode_id=f"v{v}e1", group_id=f"g{v}",
                                         adapter_version=v)
            store.write_episode(ep)
    got = store.recent_corrections("pick", max_chunks=3)
    assert [e.episode_id for e in got] == ["v1e2", "v2e0", "v2e2"]      # newest, oldest first
    assert learner.remember(got) == 3 and len(learner.corrections("pick")) == 3
    window = CorrectionWindow(capacity=2)                                  # keeps the newest
    window.add(got)
    assert len(window) == 2 and list(window.episode_ids) == ["v2e0", "v2e2"]


def test_with_observation_history_the_operators_actions_are_learned_at_the_executed_indices():
    """A policy whose chunk starts To - 1 steps back (n_obs_steps To) executes from index To - 1:
    the operator's actions move there (the index before holds the first, as LeRobot pads an
    episode's start), and only the executed indices are scored."""
    from tinyvla_grpo_ros.core.correction_window import CorrectionBatch
    from tinyvla_grpo_ros.core.sampler import build_scheduler
    from tinyvla_grpo_ros.core.sft import denoising_loss
    a0 = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2) / 16
    batch = CorrectionBatch(random_obs(tiny_model().config, B=2), a0, torch.tensor([4, 2]))
    assert torch.equal(batch.shifted(0).a0, a0)
    moved = batch.shifted(1)
    assert torch.equal(moved.a0[:, 1:], a0[:, :3]) and moved.executed.tolist() == [3, 2]
    model, sched = tiny_model(), build_scheduler(tiny_model().config, "ddpm")
    draws = (torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(0)),
             torch.tensor([3, 17]))
    loss = denoising_loss(model, sched, moved.obs, moved.a0, None, moved.executed,
                          draws=draws, offset=1)
    with torch.no_grad():
        pred = model(sched.add_noise(moved.a0, draws[0], draws[1]), draws[1],
                     model.encode(moved.obs))
    err = ((pred - draws[0]) ** 2).sum(-1)                 # (2, Ta)
    counted = err[0, 1:4].sum() + err[1, 1:3].sum()        # from index 1: 3 and 2 actions
    assert torch.allclose(loss, counted / (5 * 2), atol=1e-6)
