"""`make demo`: the GRPO loop, ending with the success rate per adapter version.

The ROS closed loop in the MuJoCo simulation (policy, episode manager and learner nodes) is not
built yet; until it lands this runs the same core pieces in one process on the toy reach task:
weak SFT from scripted demonstrations, then groups of G rollouts, GRPO updates of the task's
adapter, each version written to disk (adapters/<task>/vNNNN) and evaluated with the deterministic
sampler. Options: --updates, --group-size, --states-per-update, --seed, --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .core.adapters import AdaptedPolicy, AdapterConfig, save_adapter_version
from .core.config import SamplerConfig
from .core.learner import GRPOConfig, GRPOLearner
from .core.rollout_store import EpisodeRecord, RolloutStore
from .core.sampler import DiffusionSampler
from .sim.toy_grpo import success_rate, weak_sft_policy
from .sim.toy_reach import INSTRUCTION, ToyReach

TASK = "toy_reach"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--updates", type=int, default=12, help="GRPO updates (adapter versions)")
    ap.add_argument("--group-size", type=int, default=8, help="G rollouts per initial state")
    ap.add_argument("--states-per-update", type=int, default=8)
    ap.add_argument("--init-states", type=int, default=16, help="scenes of the task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = ap.parse_args(argv)
    print("NOTE: the ROS closed loop in MuJoCo is not built yet; running the in-process GRPO "
          "loop on the toy reach task.")
    env = ToyReach()
    print("1/2 SFT starting point from 256 scripted demonstrations ...", flush=True)
    policy = AdaptedPolicy(weak_sft_policy(args.seed), AdapterConfig(preset="adapters+head+norms"),
                           [TASK])
    sampler = DiffusionSampler(policy.model.config, SamplerConfig(stochastic_steps=3))
    learner = GRPOLearner(policy, sampler, GRPOConfig(group_size=args.group_size, lr=1e-4,
                                                      minibatch_size=32, device="auto"))
    store = RolloutStore(args.out / "rollouts")
    adapters = args.out / "adapters"
    gen = torch.Generator().manual_seed(args.seed)
    pool = [100_000 * (args.seed + 1) + i for i in range(args.init_states)]
    run = f"s{args.seed}-{torch.randint(10**6, (1,)).item():06d}"
    rows_out = [(0, 0, success_rate(env, policy, sampler, pool), float("nan"))]
    save_adapter_version(policy, adapters / run, 0, parent=None)
    print(f"2/2 GRPO: {args.updates} updates x {args.states_per_update} scenes x G="
          f"{args.group_size}", flush=True)
    episodes = 0
    for v in range(args.updates):
        pick = torch.randperm(len(pool), generator=gen)[:args.states_per_update].tolist()
        ids = [pool[i] for i in pick]
        rows = [i for i in ids for _ in range(args.group_size)]
        obs = env.observe(rows)
        chunk = sampler.sample(policy.model, obs, generator=gen)
        rewards = env.success(rows, chunk.actions).float()
        groups = []
        for n, init_id in enumerate(rows):
            g, j = divmod(n, args.group_size)
            rec = EpisodeRecord(
                episode_id=f"ep{j:02d}", group_id=f"{run}-v{v:04d}-g{g}", task=TASK,
                init_state_id=init_id, adapter_name=TASK, adapter_version=v,
                instruction=INSTRUCTION, reward=float(rewards[n]), success=bool(rewards[n]),
                tensors={"images": obs.images[n:n + 1], "states": obs.state[n:n + 1],
                         "chains": chunk.chain[n:n + 1], "log_probs": chunk.log_probs[n:n + 1],
                         "executed": torch.tensor([chunk.executed_steps])})
            store.write_episode(rec)
            if j == 0:
                groups.append([])
            groups[-1].append(rec)
        stats = learner.update(groups, generator=gen)
        episodes += len(rows)
        save_adapter_version(policy, adapters / run, v + 1, parent=v, metrics=stats.as_dict())
        rate = success_rate(env, policy, sampler, pool)
        rows_out.append((v + 1, episodes, rate, rewards.mean().item()))
        print(f"  v{v + 1:04d}  episodes {episodes:4d}  explore success {rewards.mean():.2f}  "
              f"deterministic success {rate:.2f}  approx_kl {stats.approx_kl:.4f}", flush=True)
    print("\nsuccess rate per adapter version (deterministic sampler, "
          f"{len(pool)} scenes)")
    print("| version | episodes | success |\n|---|---|---|")
    for v, e, r, _ in rows_out:
        print(f"| v{v:04d} | {e} | {r:.2f} |")
    best = max(rows_out, key=lambda r: r[2])
    print(f"\nbest version v{best[0]:04d} ({best[2]:.2f}); adapters in {adapters / run}, "
          f"rollouts in {args.out / 'rollouts'}")


if __name__ == "__main__":
    main()
