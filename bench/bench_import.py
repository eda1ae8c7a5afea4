"""Closed-loop parity of the LeRobot import: a reach-v3 SFT start with the LeRobot-shaped model
(the package's own SFT on its scripted demonstrations), exported to a LeRobot directory, imported
back with `python -m tinyvla_grpo_ros.import_policy`, and both run side by side.

    python bench/bench_import.py            # 30 demos, 1500 SFT steps, 50 paired states
    python bench/bench_import.py --quick    # make bench: 10 demos, 200 steps, 8 states

Prints import_roundtrip_max_action_diff (the largest |difference| of the deterministic actions
of the two models over every decision of the evaluation, the same observations and x_K) and
import_roundtrip_success_delta (imported minus original deterministic success on the same
paired held-out states), and the SFT start's success. Writes bench/results/import[_quick].json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tinyvla_grpo_ros.core.checkpoint import load_checkpoint
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.import_policy import import_policy
from tinyvla_grpo_ros.importers.lerobot import export_lerobot
from tinyvla_grpo_ros.sim.metaworld_scene import MetaWorldScene
from tinyvla_grpo_ros.sim.rollout import run_lockstep
from tinyvla_grpo_ros.sim.sft_start import build_sft_start

ROOT = Path(__file__).resolve().parents[1]
EVAL_FIRST = 30000          # held-out init states (demos use 0..demos-1)


def evaluate(ckpt: Path, states: list[int], marker: float) -> tuple[list[bool], list]:
    model, scfg, _ = load_checkpoint(ckpt)
    torch.set_num_threads(1)
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)
    actions = []
    orig = sampler.sample

    def sample(m, obs, *args, **kw):               # record every deterministic chunk
        chunk = orig(m, obs, *args, **kw)
        actions.append(chunk.actions.detach().clone())
        return chunk
    sampler.sample = sample
    scenes = [MetaWorldScene("reach-v3", image_size=model.config.image_size,
                             goal_marker_radius=marker) for _ in states]
    eps = run_lockstep(scenes, model, sampler, states, True, torch.Generator().manual_seed(0),
                       noise_key=0)
    for s in scenes:
        s.close()
    return [e.success for e in eps], actions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--demos", type=int, default=30)
    ap.add_argument("--sft-steps", type=int, default=1500)
    ap.add_argument("--states", type=int, default=50)
    ap.add_argument("--goal-marker-radius", type=float, default=0.04)
    args = ap.parse_args()
    if args.quick:
        args.demos, args.sft_steps, args.states = 10, 200, 8
    t0 = time.time()
    start = build_sft_start("reach-v3", args.demos, args.sft_steps, cache=ROOT / "cache" / "sft",
                            goal_marker_radius=args.goal_marker_radius,
                            architecture="diffusion_policy", eval_episodes=10)
    model, scfg, _ = load_checkpoint(start)
    states = list(range(EVAL_FIRST, EVAL_FIRST + args.states))
    with tempfile.TemporaryDirectory() as tmp:
        src = export_lerobot(model, scfg, Path(tmp) / "lerobot", layout="v0.4")
        imported = import_policy(src, Path(tmp) / "imported")
        ok_orig, act_orig = evaluate(start, states, args.goal_marker_radius)
        ok_imp, act_imp = evaluate(imported, states, args.goal_marker_radius)
    same_decisions = len(act_orig) == len(act_imp) and all(
        a.shape == b.shape for a, b in zip(act_orig, act_imp))
    diff = max(float((a - b).abs().max()) for a, b in zip(act_orig, act_imp)) \
        if same_decisions else float("inf")
    delta = float(np.mean(ok_imp) - np.mean(ok_orig))
    result = {"start": str(start), "demos": args.demos, "sft_steps": args.sft_steps,
              "states": states, "original_success": float(np.mean(ok_orig)),
              "imported_success": float(np.mean(ok_imp)), "decisions": len(act_orig),
              "max_action_diff": diff, "success_delta": delta,
              "seconds": round(time.time() - t0, 1)}
    out = ROOT / "bench" / "results" / ("import_quick.json" if args.quick else "import.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"LeRobot-shaped reach-v3 start ({args.demos} demos, {args.sft_steps} SFT steps): "
          f"deterministic success {np.mean(ok_orig):.2f} -> imported {np.mean(ok_imp):.2f} on "
          f"{len(states)} paired states, {len(act_orig)} decision batches")
    print(f"import_roundtrip_max_action_diff={diff:.3g}")
    print(f"import_roundtrip_success_delta={delta:+.3f}")


if __name__ == "__main__":
    main()
