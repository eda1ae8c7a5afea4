"""Where does an SFT policy's outcome randomness come from: the initial noise x_K, or the K'
scored denoising steps? GRPO can credit only the second (x_K does not depend on the weights).

    python experiments/diag_noise_sources.py                       # reach and push, cell of seed 1
    python experiments/diag_noise_sources.py --tasks push-v3 --seed 2 --xk-draws 5 --rollouts 8
    python experiments/diag_noise_sources.py --xk-draws 10 --out eval_spread   # evaluation noise

Per cell state (the learning bench's cell, bench_learning.py), on the cached SFT start:
- x_K only: deterministic (mean-chain) runs from `--xk-draws` draws of x_K. A state is
  *x_K-sensitive* when its outcome differs between draws. Each draw is also one deterministic
  evaluation of the whole cell, as bench_learning runs it: the spread of their success rates
  (`xk_draw_success_sd`) is how far such an evaluation moves with the x_K seed alone.
- K' only: `--rollouts` stochastic rollouts with x_K = 0 (init_noise_scale 0). A state is
  *K'-mixed* when some rollouts succeed and some fail: these give GRPO a group with signal
  whose cause it can credit.
Writes bench/results/noise_sources.json and .png; prints the fractions last as name=value lines.
Each task runs in its own process on one core (`--jobs` at a time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"


def measure(task: str, ckpt: str, seed: int, cell: int, xk_draws: int, rollouts: int) -> dict:
    import dataclasses

    import numpy as np
    import torch
    torch.set_num_threads(1)
    from tinyvla_grpo_ros.core.checkpoint import load_checkpoint
    from tinyvla_grpo_ros.core.init_states import outcome_classes
    from tinyvla_grpo_ros.core.sampler import DiffusionSampler
    from tinyvla_grpo_ros.sim.metaworld_grpo import CELL_FIRST_ID
    from tinyvla_grpo_ros.sim.metaworld_scene import MetaWorldScene
    from tinyvla_grpo_ros.sim.rollout import run_lockstep

    t0 = time.time()
    model, scfg, _ = load_checkpoint(ckpt)
    ids = [CELL_FIRST_ID + 100 * seed + i for i in range(cell)]
    scenes = [MetaWorldScene(task, image_size=model.config.image_size, goal_marker_radius=0.04)
              for _ in ids]

    draw_rates: list[float] = []      # cell success of each deterministic x_K draw

    def successes(init_scale: float, deterministic: bool, runs: int, gen_seed: int) -> list[int]:
        sampler = DiffusionSampler(model.config,
                                   dataclasses.replace(scfg, init_noise_scale=init_scale))
        counts = np.zeros(len(ids), dtype=int)
        stochastic_gen = torch.Generator().manual_seed(gen_seed)
        for r in range(runs):
            # deterministic runs differ only in x_K: a fresh seed per draw
            g = torch.Generator().manual_seed(gen_seed + r) if deterministic else stochastic_gen
            wins = [e.success for e in run_lockstep(scenes, model, sampler, ids,
                                                     deterministic, g)]
            counts += wins
            if deterministic:
                draw_rates.append(float(np.mean(wins)))
        return counts.tolist()

    xk = successes(1.0, True, xk_draws, 1000 * seed)
    kp = successes(0.0, False, rollouts, 10_000 + seed)
    for s in scenes:
        s.close()
    xk_classes, kp_classes = outcome_classes(xk, xk_draws), outcome_classes(kp, rollouts)
    return {"task": task, "seed": seed, "checkpoint": ckpt, "cell": [ids[0], ids[-1]],
            "xk_draws": xk_draws, "xk_successes": xk, "xk_classes": xk_classes,
            "xk_sensitive_fraction": xk_classes["mixed"] / len(ids),
            # what one deterministic evaluation (one x_K draw per state) of the cell reads
            "xk_draw_success": draw_rates,
            "xk_draw_success_sd": float(np.std(draw_rates, ddof=1)) if xk_draws > 1 else 0.0,
            "rollouts": rollouts, "kprime_successes": kp, "kprime_classes": kp_classes,
            "kprime_mixed_fraction": kp_classes["mixed"] / len(ids),
            "wall_seconds": round(time.time() - t0, 1)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(results))
    ax.bar([i - 0.2 for i in x], [r["xk_sensitive_fraction"] for r in results], 0.4,
           label="outcome changes with x_K (deterministic)")
    ax.bar([i + 0.2 for i in x], [r["kprime_mixed_fraction"] for r in results], 0.4,
           label="mixed from the K' steps alone (x_K = 0)")
    ax.set_xticks(list(x), [r["task"] for r in results])
    ax.set_ylabel("fraction of cell states")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Sources of outcome randomness at the SFT start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3"])
    ap.add_argument("--seed", type=int, default=1, help="whose cell (bench_learning seeds)")
    ap.add_argument("--cell", type=int, default=30)
    ap.add_argument("--xk-draws", type=int, default=3)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="noise_sources")
    args = ap.parse_args()
    from tinyvla_grpo_ros.sim.sft_start import task_sft_start
    for name in ("cell", "xk_draws", "rollouts", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    ckpts = {t: str(task_sft_start(t, ROOT / "cache" / "sft")) for t in args.tasks}
    os.environ["OMP_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futs = [pool.submit(measure, t, ckpts[t], args.seed, args.cell, args.xk_draws,
                            args.rollouts) for t in args.tasks]
        results = [f.result() for f in futs]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "runs": results}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(results, RESULTS / f"{args.out}.png")
    for r in results:
        t = r["task"].replace("-", "_")
        print(f"{r['task']} s{r['seed']}: x_K-sensitive states {r['xk_classes']['mixed']}/"
              f"{args.cell}; K'-only never/mixed/always {r['kprime_classes']} "
              f"({r['wall_seconds']:.0f} s)")
        print(f"noise_{t}_xk_sensitive_fraction={r['xk_sensitive_fraction']:.3f}")
        print(f"noise_{t}_kprime_mixed_fraction={r['kprime_mixed_fraction']:.3f}")
        rates = r["xk_draw_success"]
        print(f"noise_{t}_xk_draw_success_mean={sum(rates) / len(rates):.3f}")
        print(f"noise_{t}_xk_draw_success_sd={r['xk_draw_success_sd']:.3f}")


if __name__ == "__main__":
    main()
