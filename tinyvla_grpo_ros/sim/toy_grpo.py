"""The closed GRPO loop on the toy reach task, in one process: weak SFT, then groups and updates.

Used by the learning test and by bench/bench_learner.py (toy_success_before / toy_success_after).
Each update draws `states_per_update` initial states, samples G chunks for each (stochastic
sampler, last K' steps), scores them with the task's success, and runs one GRPO update. Success is
measured with the deterministic (mean) sampler on held-out initial states.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core.adapters import AdaptedPolicy, AdapterConfig
from ..core.config import SamplerConfig, SFTConfig
from ..core.learner import GRPOConfig, GRPOLearner
from ..core.model import TinyVLAPolicy
from ..core.rollout_store import EpisodeRecord
from ..core.sampler import DiffusionSampler
from ..core.sft import train_sft
from .toy_reach import INSTRUCTION, ToyReach, toy_model_config

EVAL_IDS = list(range(5000, 5128))


@dataclass
class ToyResult:
    success_before: float
    success_after: float
    best_success: float
    episodes: int
    curve: list[tuple[int, float]] = field(default_factory=list)   # (episodes, det. success)
    seconds: float = 0.0


def weak_sft_policy(seed: int = 0, demos: int = 256, steps: int = 400) -> TinyVLAPolicy:
    env = ToyReach()
    torch.manual_seed(seed)
    model = TinyVLAPolicy(toy_model_config())
    train_sft(model, env.demonstrations(list(range(demos))),
              SFTConfig(steps=steps, batch_size=64, lr=3e-3, seed=seed), progress=False)
    return model.eval()


def success_rate(env: ToyReach, policy: AdaptedPolicy, sampler: DiffusionSampler,
                 ids: list[int] = EVAL_IDS) -> float:
    chunk = sampler.sample(policy.model, env.observe(ids), torch.Generator().manual_seed(0),
                           deterministic=True)
    return env.success(ids, chunk.actions).float().mean().item()


def toy_grpo_config(**overrides) -> GRPOConfig:
    """The toy's learner settings (lr 1e-4, minibatch 32, no KL stop, warm-up or base-lr scale):
    the toy's head is small and trains at the full rate."""
    return GRPOConfig(**(dict(group_size=8, lr=1e-4, epochs=4, minibatch_size=32,
                              micro_batch_size=64, target_kl=0.0, warmup_steps=0,
                              base_lr_scale=1.0, device="cpu") | overrides))


def run_toy_grpo(seed: int = 0, updates: int = 4, group_size: int = 8, states_per_update: int = 8,
                 num_init_states: int = 16, preset: str = "adapters+head+norms",
                 grpo: GRPOConfig | None = None, sft_steps: int = 400, eval_every: int = 1
                 ) -> ToyResult:
    """As on a robot, the task has a fixed set of `num_init_states` scenes (unseen in the SFT
    demonstrations); each update draws `states_per_update` of them, and success is the
    deterministic success over all of them."""
    t0 = time.time()
    env = ToyReach()
    base = weak_sft_policy(seed, steps=sft_steps)
    sampler = DiffusionSampler(base.config, SamplerConfig(num_inference_steps=10,
                                                          stochastic_steps=3,
                                                          min_sampling_std=0.1,
                                                          min_logprob_std=0.1), sft_model=base)
    policy = AdaptedPolicy(base, AdapterConfig(preset=preset), ["toy_reach"])
    grpo = grpo or toy_grpo_config(group_size=group_size, lr=3e-4, minibatch_size=64)
    learner = GRPOLearner(policy, sampler, grpo)
    gen = torch.Generator().manual_seed(seed)
    pool = [100_000 * (seed + 1) + i for i in range(num_init_states)]
    before = success_rate(env, policy, sampler, pool)
    curve, best, episodes = [(0, before)], before, 0
    for u in range(updates):
        pick = torch.randperm(num_init_states, generator=gen)[:states_per_update]
        ids = [pool[i] for i in pick.tolist()]
        rows = [i for i in ids for _ in range(group_size)]
        obs = env.observe(rows)
        chunk = sampler.sample(policy.model, obs, generator=gen)
        rewards = env.success(rows, chunk.actions).float()
        groups = []
        for g, init_id in enumerate(ids):
            eps = []
            for j in range(group_size):
                n = g * group_size + j
                eps.append(EpisodeRecord(
                    episode_id=f"u{u}-s{init_id}-e{j}", group_id=f"u{u}-s{init_id}",
                    task="toy_reach", init_state_id=init_id, adapter_name="toy_reach",
                    adapter_version=u, instruction=INSTRUCTION, reward=float(rewards[n]),
                    success=bool(rewards[n] > 0),
                    tensors={"images": obs.images[n:n + 1], "states": obs.state[n:n + 1],
                             "chains": chunk.chain[n:n + 1], "log_probs": chunk.log_probs[n:n + 1],
                             "executed": torch.tensor([chunk.executed_steps])}))
            groups.append(eps)
        learner.update(groups, generator=gen)
        episodes += len(rows)
        if (u + 1) % eval_every == 0 or u == updates - 1:
            rate = success_rate(env, policy, sampler, pool)
            curve.append((episodes, rate))
            best = max(best, rate)
    return ToyResult(before, curve[-1][1], best, episodes, curve, time.time() - t0)
