"""Sampler costs, measured side by side in one run (CPU unless --device cuda).

    logprob_overhead_ratio   sampling with / without recording chain + log-probs (goal <= 1.10)
    batched_rescore_speedup  per-step re-scoring (a policy call per step) / one batched call (>= 3)
    frozen_prefix_latency_ratio   a decision (B = 1) with the exact trust region / without: the
                             frozen SFT copy runs the unscored steps and encodes the
                             observation a second time
    forward_ms_<preset>, params_m_<preset>   encode + one head step, batch 1, per model preset
"""
import argparse
import statistics
import time

import torch

from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.model import Observation, TinyVLAPolicy
from tinyvla_grpo_ros.core.sampler import DiffusionSampler


def obs_for(cfg: ModelConfig, B: int) -> Observation:
    return Observation(torch.randint(0, 256, (B, cfg.num_cameras, cfg.image_size, cfg.image_size,
                                              3), dtype=torch.uint8),
                       torch.randn(B, cfg.state_dim), ["pick up the red block"] * B)


def interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each fn, runs interleaved so drift hits all alike."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    reps = 15 if args.quick else 60
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    model = TinyVLAPolicy(cfg).eval().to(args.device)
    sampler = DiffusionSampler(cfg, SamplerConfig(num_inference_steps=10, stochastic_steps=3,
                                                  frozen_prefix=False))   # the plain decision
    obs = obs_for(cfg, 1).to(args.device)
    with torch.no_grad():
        t = interleaved({
            "record": lambda: sampler.sample(model, obs, torch.Generator().manual_seed(0)),
            "plain": lambda: sampler.sample(model, obs, torch.Generator().manual_seed(0),
                                            record=False)}, reps)
        print(f"sample tiny B=1 K=10 K'=3: with log-probs {t['record'] * 1e3:.2f} ms, "
              f"without {t['plain'] * 1e3:.2f} ms")
        print(f"logprob_overhead_ratio={t['record'] / t['plain']:.3f}")

        frozen = DiffusionSampler(cfg, SamplerConfig(num_inference_steps=10, stochastic_steps=3,
                                                     frozen_prefix=True), sft_model=model)
        frozen.to(args.device)
        t = interleaved({
            "frozen": lambda: frozen.sample(model, obs, torch.Generator().manual_seed(0)),
            "plain": lambda: sampler.sample(model, obs, torch.Generator().manual_seed(0))},
            reps)
        print(f"decision with the frozen prefix {t['frozen'] * 1e3:.2f} ms, without "
              f"{t['plain'] * 1e3:.2f} ms")
        print(f"frozen_prefix_latency_ratio={t['frozen'] / t['plain']:.3f}")

        B = 16
        obs_b = obs_for(cfg, B).to(args.device)
        for kp, suffix in ((3, ""), (10, "_k10")):    # the default K' = 3, and every step
            s = DiffusionSampler(cfg, SamplerConfig(num_inference_steps=10, stochastic_steps=kp),
                                 sft_model=model)
            chain = s.sample(model, obs_b, torch.Generator().manual_seed(0)).chain
            t = interleaved({
                "per_step": lambda s=s, c=chain: s.chain_log_prob_per_step(model, obs_b, c),
                "batched": lambda s=s, c=chain: s.chain_log_prob(model, obs_b, c)}, reps)
            print(f"re-score B={B} K'={kp}: per-step {t['per_step'] * 1e3:.2f} ms, "
                  f"batched {t['batched'] * 1e3:.2f} ms")
            print(f"batched_rescore_speedup{suffix}={t['per_step'] / t['batched']:.2f}")

        presets = ["tiny", "tinyvla_s"] if args.quick else ["tiny", "tinyvla_s", "tinyvla_b"]
        for name in presets:
            pc = ModelConfig.preset(name)
            m = TinyVLAPolicy(pc).eval().to(args.device)
            o = obs_for(pc, 1).to(args.device)
            x = torch.randn(1, pc.horizon, pc.action_dim, device=args.device)
            step = torch.tensor([10], device=args.device)
            t = interleaved({name: lambda m=m, o=o, x=x, s=step: m(x, s, m.encode(o))},
                            3 if name != "tiny" else reps)
            print(f"forward_ms_{name}={t[name] * 1e3:.1f}")
            print(f"params_m_{name}={m.num_parameters() / 1e6:.2f}")
            del m


if __name__ == "__main__":
    main()
