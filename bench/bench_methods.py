"""Learning methods side by side: the same SFT starts, seeds, cells and paired evaluations.

    python bench/bench_methods.py                        # 3 methods x 3 tasks x 3 seeds
    python bench/bench_methods.py --tasks reach-v3 --seeds 0 --methods grpo grpo+etr   # screen
    python bench/bench_methods.py --quick                # make bench: 2 short runs

Methods (each sets its distinguishing fields explicitly, whatever the recipe's defaults are):
    grpo            GRPO with the trained weights on every denoising step (the old behaviour)
    grpo+etr        + the exact trust region: the unscored steps run the frozen SFT copy
    null            GRPO with each group's outcomes shuffled among its episodes: what the
                    updates alone do, the figure every method must beat
    grpo+etr+corrections   grpo+etr with a simulated operator correcting the exploring rollouts
                    (core/corrections.py; not in the default list: `--methods ... --out
                    corrections`); evaluations are never corrected
A run is bench_learning.py's child (one subprocess, one core) and its file
bench/results/runs/<out>/<task>-s<seed>-<method>.json is reused when its recipe (learner, run,
sampler overrides) is the one asked for. Per method and task, bench/results/<out>.json holds
the cell and held-out lift (mean, worst seed, a 95% interval over the paired (seed, state)
differences), the exploring policy's success in the first and last quarter, the fraction of
groups with signal, the learner's seconds per update and how far each update moved x_{K'}
(in units of the std floor); <out>.png plots the lifts. name=value lines print last.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import bench_learning as bl
import numpy as np

from tinyvla_grpo_ros.core.config import GRPOConfig, SamplerConfig
from tinyvla_grpo_ros.core.corrections import OperatorConfig
from tinyvla_grpo_ros.core.intervals import paired_interval
from tinyvla_grpo_ros.sim.metaworld_grpo import RunConfig

PLAIN = {"grpo": {}, "sampler": {"frozen_prefix": False}, "run": {"shuffle_credit": False}}


def methods() -> dict[str, dict]:
    """Each method's overrides of the learner, sampler and run settings. (grpo+etr+sft and
    filtered_bc, the denoising loss on recent successes, were measured in methods.json and
    removed; docs/EXPERIMENTS.md says where they lived.)"""
    return {
        "grpo": {"sampler": {"frozen_prefix": False}},
        "grpo+etr": {"sampler": {"frozen_prefix": True}},
        "null": {"sampler": {"frozen_prefix": False}, "run": {"shuffle_credit": True}},
        "grpo+etr+corrections": {"sampler": {"frozen_prefix": True},
                                 "operator": asdict(OperatorConfig())},
    }


DEFAULT_METHODS = ("grpo", "grpo+etr", "null")


def method_spec(base: dict, overrides: dict) -> dict:
    spec = {k: dict(v) for k, v in base.items()}
    spec["operator"] = overrides.get("operator")          # None: no corrections
    for part, values in overrides.items():
        if part != "operator":
            spec[part].update(values)
    for part, values in PLAIN.items():          # unset method fields take the plain value
        for k, v in values.items():
            spec[part].setdefault(k, v)
    GRPOConfig(**spec["grpo"])
    RunConfig(**spec["run"])
    SamplerConfig(**spec["sampler"])
    return spec


def summarize(rs: list[dict]) -> dict:
    cell = [r["final_success"] - r["sft_success"] for r in rs]
    held = [r["heldout_final_success"] - r["heldout_sft_success"] for r in rs]
    states = [r["eval_state_success"] for r in rs]
    cell_d = [b - a for s in states for a, b in zip(s["cell"][0], s["cell"][-1])]
    held_d = [b - a for s in states for a, b in zip(s["heldout"][0], s["heldout"][1])]

    def quarter(r, q):
        e = [s for _, s in r["explore_curve"]]
        n = max(1, len(e) // 4)
        return float(np.mean(e[:n] if q == 0 else e[-n:]))

    shifts = [u["prefix_shift"] for r in rs for u in r["updates"] if u["optimizer_steps"]]
    out = {"runs": len(rs), "seeds": [r["seed"] for r in rs], "episodes": rs[0]["episodes"],
           "sft": float(np.mean([r["sft_success"] for r in rs])),
           "final": float(np.mean([r["final_success"] for r in rs])),
           "cell_lift_mean": 100 * float(np.mean(cell)),
           "cell_lift_worst_seed": 100 * float(np.min(cell)),
           "heldout_sft": float(np.mean([r["heldout_sft_success"] for r in rs])),
           "heldout_final": float(np.mean([r["heldout_final_success"] for r in rs])),
           "heldout_lift_mean": 100 * float(np.mean(held)),
           "heldout_lift_worst_seed": 100 * float(np.min(held)),
           "explore_first_quarter": float(np.mean([quarter(r, 0) for r in rs])),
           "explore_last_quarter": float(np.mean([quarter(r, 3) for r in rs])),
           "signal_group_fraction": bl.signal_fraction(rs),
           "learner_seconds_per_update": float(np.mean([r["learner_seconds_per_update"]
                                                        for r in rs])),
           "prefix_shift_per_update": float(np.mean(shifts)) if shifts else 0.0,
           "corrected_step_share_by_quarter": np.mean(
               [r.get("corrected_step_share_by_quarter") or [0.0] * 4 for r in rs],
               axis=0).tolist(),
           "wall_seconds_mean": float(np.mean([r["wall_seconds"] for r in rs]))}
    for name, d in (("cell", cell_d), ("heldout", held_d)):
        _, lo, hi = paired_interval(100 * np.asarray(d))
        out[f"{name}_lift_paired_ci95"] = [lo, hi]
        out[f"{name}_paired_states"] = len(d)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["methods"])
    tasks = sorted({t for m in result["summary"].values() for t in m})
    shares = {m: t for m, t in result["summary"].items()
              if any(any(s.get("corrected_step_share_by_quarter") or []) for s in t.values())}
    rows = 2 if shares else 1
    fig, axes = plt.subplots(rows, len(tasks), figsize=(4.6 * len(tasks), 3.6 * rows),
                             squeeze=False, sharey="row")
    for ax, task in zip(axes[0], tasks):
        for i, m in enumerate(names):
            s = result["summary"].get(m, {}).get(task)
            if not s:
                continue
            lo, hi = s["cell_lift_paired_ci95"]
            ax.bar(i, s["cell_lift_mean"], color="tab:blue", alpha=0.7)
            ax.errorbar(i, s["cell_lift_mean"], yerr=[[s["cell_lift_mean"] - lo],
                                                      [hi - s["cell_lift_mean"]]],
                        color="k", capsize=3, lw=1)
            seeds = [r for r in result["runs"] if r["method"] == m and r["task"] == task]
            ax.scatter([i] * len(seeds), [100 * (r["final_success"] - r["sft_success"])
                                          for r in seeds], color="k", s=8, zorder=3)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("cell lift, points (95% paired CI, seeds as dots)")
    for ax, task in zip(axes[1] if shares else [], tasks):   # the operator's share per quarter
        for m, per in shares.items():
            q = per.get(task, {}).get("corrected_step_share_by_quarter") or []
            ax.plot(range(1, len(q) + 1), [100 * v for v in q], marker="o", label=m)
        ax.axhline(5, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("quarter of the run")
        ax.set_xticks([1, 2, 3, 4])
        ax.grid(alpha=0.3)
    if shares:
        axes[1][0].set_ylabel("steps corrected by the operator, %")
        axes[1][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(bl.TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                    choices=list(methods()))
    ap.add_argument("--out", default="methods", help="results name under bench/results")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    ap.add_argument("--rerun", action="store_true", help="ignore finished runs on disk")
    ap.add_argument("--quick", action="store_true", help="two short runs (make bench)")
    ap.add_argument("--collect", action="store_true", help="run nothing: summarize the runs "
                    "already on disk (a grid cut short)")
    bl.recipe_options(ap)
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.out, args.rerun = ["reach-v3"], [0], "methods_quick", True
        args.methods = ["grpo", "grpo+etr"]
        args.demos, args.sft_steps, args.episodes, args.cell, args.heldout = 8, 300, 32, 8, 4
        args.eval_every = 1
    try:
        base = bl.run_spec(args, RunConfig.preset)
        table = methods()
        specs = {m: method_spec(base, table[m]) for m in args.methods}
    except ValueError as e:
        ap.error(str(e))
    t0 = time.time()
    ckpts = bl.sft_starts(args, ap)
    run_dir = bl.RESULTS / "runs" / args.out
    jobs = []
    for s in args.seeds:              # a seed's whole comparison first: partial grids compare
        for t in args.tasks:
            for m in args.methods:
                out = run_dir / f"{t}-s{s}-{bl.slug(m)}.json"
                if out.is_file() and not bl.same_recipe(json.loads(out.read_text()), specs[m]):
                    print(f"{out.name}: stored with another recipe; kept as .stale.json, "
                          "running again")
                    out.replace(out.with_suffix(".stale.json"))
                jobs.append({"task": t, "seed": s, "spec": specs[m], "ckpt": ckpts[t],
                             "out": str(out), "method": m})
    if args.collect:
        jobs = [j for j in jobs if Path(j["out"]).is_file()]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: bl.run_one(j, args) | {"method": j["method"]}, jobs))
    summary: dict[str, dict] = {}
    for m in args.methods:
        for t in args.tasks:
            rs = [r for r in runs if r["method"] == m and r["task"] == t]
            if rs:
                summary.setdefault(m, {})[t] = summarize(rs)
    drop = ("checkpoint", "learner_seconds", "updates")
    wall = round(time.time() - t0, 1)
    stored = bl.RESULTS / f"{args.out}.json"
    if args.collect and stored.is_file():        # collecting runs nothing: keep the run's wall
        wall = json.loads(stored.read_text()).get("wall_seconds", wall)
    result = {"name": args.out, "methods": args.methods, "specs": specs, "summary": summary,
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "wall_seconds": wall,
              "runs": [{k: v for k, v in r.items() if k not in drop} for r in runs]}
    bl.RESULTS.mkdir(parents=True, exist_ok=True)
    (bl.RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, bl.RESULTS / f"{args.out}.png")
    p = args.out
    for m, per_task in summary.items():
        for t, s in per_task.items():
            k = f"{p}_{bl.slug(m)}_{bl.slug(t)}"
            lo, hi = s["cell_lift_paired_ci95"]
            print(f"{m} {t}: SFT {s['sft']:.2f} -> {s['final']:.2f} (cell lift "
                  f"{s['cell_lift_mean']:+.1f} [{lo:+.1f}, {hi:+.1f}], worst seed "
                  f"{s['cell_lift_worst_seed']:+.1f}; held-out {s['heldout_lift_mean']:+.1f}; "
                  f"explore {s['explore_first_quarter']:.2f} -> {s['explore_last_quarter']:.2f};"
                  f" signal {s['signal_group_fraction']:.2f}; "
                  f"{s['learner_seconds_per_update']:.1f} s/update; x_K' shift "
                  f"{s['prefix_shift_per_update']:.3f})")
            print(f"{k}_cell_lift_points={s['cell_lift_mean']:.1f}")
            print(f"{k}_heldout_lift_points={s['heldout_lift_mean']:.1f}")
        lifts = [s["cell_lift_mean"] for s in per_task.values()]
        print(f"{p}_{bl.slug(m)}_mean_lift_points={np.mean(lifts):.1f}")
    print(f"{p}_wall_min={result['wall_seconds'] / 60:.1f}")


if __name__ == "__main__":
    main()
