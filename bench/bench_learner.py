"""Learner costs per trainable preset and the toy learning result (CPU unless a GPU is present).

    learner_s_per_group_<preset>, learner_peak_mb_<preset>   tiny model, G=8, 4 epochs
    adapters_vs_full_memory_ratio   TinyVLA-S shape, fwd + bwd peak memory, adapters / full
    toy_success_before, toy_success_after, toy_episodes      the learning test's toy, fixed seed
Each memory figure comes from its own subprocess (peak RSS above the model's resident size on CPU,
torch.cuda.max_memory_allocated on CUDA), so presets do not see each other's allocations.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch

PRESETS = ("adapters", "head", "adapters+head+norms", "adapters+last_k_blocks+head", "full")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(kind: str, preset: str) -> dict:
    from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig
    from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
    from tinyvla_grpo_ros.core.learner import GRPOConfig, GRPOLearner
    from tinyvla_grpo_ros.core.model import TinyVLAPolicy
    from tinyvla_grpo_ros.core.sampler import DiffusionSampler
    from tinyvla_grpo_ros.core.synthetic import synthetic_groups as make_groups

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    name = "tiny" if kind == "learner" else "tinyvla_s"
    mcfg = ModelConfig.preset(name)
    model = TinyVLAPolicy(mcfg).to(dev)
    sampler = DiffusionSampler(mcfg, SamplerConfig(stochastic_steps=3), sft_model=model)
    policy = AdaptedPolicy(model, AdapterConfig(preset=preset), ["task"])
    G = 8 if kind == "learner" else 2
    groups = make_groups(policy, sampler, n_groups=1 if kind == "memory" else 2, G=G)
    for g in groups:
        for e in g:
            e.adapter_name = "task"
    learner = GRPOLearner(policy, sampler, GRPOConfig(group_size=G, epochs=4 if kind ==
                                                       "learner" else 1, target_kl=0.0,
                                                       device=dev))
    base = current_rss_mb()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    t0 = time.perf_counter()
    learner.update(groups)
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else rss_mb()
    return {"s_per_group": secs / len(groups), "peak_mb": peak - base, "device": dev}


def run_child(kind: str, preset: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, preset],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    for preset in PRESETS:
        r = run_child("learner", preset)
        print(f"learner_s_per_group_{preset.replace('+', '_')}={r['s_per_group']:.3f}")
        print(f"learner_peak_mb_{preset.replace('+', '_')}={r['peak_mb']:.1f}")
        print(f"learner_groups_per_min_{preset.replace('+', '_')}_{r['device']}="
              f"{60 / r['s_per_group']:.0f}")
    mem = {p: run_child("memory", p) for p in ("adapters", "full")}
    a_mb, f_mb = mem["adapters"]["peak_mb"], mem["full"]["peak_mb"]
    print(f"TinyVLA-S fwd+bwd on {mem['full']['device']}: adapters {a_mb:.0f} MB, "
          f"full {f_mb:.0f} MB")
    print(f"adapters_vs_full_memory_ratio={a_mb / f_mb:.3f}")

    from tinyvla_grpo_ros.sim.toy_grpo import run_toy_grpo, toy_grpo_config
    res = run_toy_grpo(seed=0, updates=12, states_per_update=8, num_init_states=16,
                       preset="adapters+head+norms", eval_every=2,
                       grpo=toy_grpo_config())
    print(f"toy curve (episodes, deterministic success): {res.curve}")
    print(f"toy_success_before={res.success_before:.3f}")
    print(f"toy_success_after={res.success_after:.3f}")
    print(f"toy_episodes={res.episodes}")


if __name__ == "__main__":
    main()
