"""Learning results: GRPO on Meta-World tasks from their SFT starting points, over seeds.

    python bench/bench_learning.py           # 3 tasks x 3 seeds, preset adapters+head+norms
    python bench/bench_learning.py --out trainable_sets --tasks reach-v3 --seeds 0 1 2 \\
        --episodes 192 --presets adapters head adapters+head+norms adapters+last_k_blocks+head full
    python bench/bench_learning.py --quick         # make bench: one short run (smoke figure)

Each (task, seed, preset) run is its own subprocess (torch on one thread; `--jobs` of them at a
time) and writes bench/results/runs/<out>/<task>-s<seed>-<preset>.json. Then the runs are
aggregated into bench/results/<out>.json (per task and seed: SFT success, final success,
episode count, curve) and a PNG of success versus GRPO episodes; the key figures are printed
last as name=value lines. The SFT starting point of each task is built first (cached, see
tinyvla_grpo_ros/sim/sft_start.py). The run, learner and sampler options are derived from
RunConfig, GRPOConfig and SamplerConfig (`--help` lists them with the adopted defaults).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from tinyvla_grpo_ros.core.adapters import PRESETS
from tinyvla_grpo_ros.core.config import GRPOConfig, SamplerConfig
from tinyvla_grpo_ros.core.init_states import OUTCOME_CLASSES
from tinyvla_grpo_ros.core.recipe import add_arguments, from_arguments, settings
from tinyvla_grpo_ros.sim.metaworld_grpo import RunConfig
from tinyvla_grpo_ros.sim.sft_start import task_sft_start

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TASKS = ("reach-v3", "button-press-topdown-v3", "push-v3")


def slug(s: str) -> str:
    return s.replace("+", "_").replace("-", "_")


def run_spec(args, preset: str) -> dict:
    """Everything one run needs, from the recipe options (each checks itself here, in the
    parent, before minutes of SFT and rollouts). The KL to the SFT reference exists for the
    adapters preset only (the reference is the model with adapters disabled)."""
    grpo = from_arguments(GRPOConfig, args, device="cpu",
                          kl_coef=args.kl_coef if preset == "adapters" else 0.0)
    run = from_arguments(RunConfig, args, preset=preset)
    sampler = {f.name: getattr(args, f.name) for f in settings(SamplerConfig, SamplerConfig.RECIPE)
               if hasattr(args, f.name)}           # the checkpoint's values unless given ...
    for name in SamplerConfig.ADOPTED:             # ... but the recipe's, named in the spec
        sampler.setdefault(name, getattr(SamplerConfig(), name))
    SamplerConfig(**sampler)                       # checks the overrides' ranges
    return {"grpo": asdict(grpo), "run": asdict(run), "sampler": sampler}


def child(args) -> None:
    import torch
    torch.set_num_threads(1)
    from tinyvla_grpo_ros.sim.metaworld_grpo import run_metaworld_grpo
    spec = json.loads(args.child_spec)
    from tinyvla_grpo_ros.core.corrections import OperatorConfig
    operator = OperatorConfig(**spec["operator"]) if spec.get("operator") else None
    res = run_metaworld_grpo(args.child_ckpt, args.child_task, args.child_seed,
                             RunConfig(**spec["run"]), GRPOConfig(**spec["grpo"]),
                             sampler_overrides=spec["sampler"],
                             log=lambda s: print(s, file=sys.stderr, flush=True),
                             operator=operator)
    out = Path(args.child_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


LEGACY = {"frozen_prefix": False}
OPERATOR_ONLY = ("correction_weight",)


def same_recipe(stored: dict, spec: dict) -> bool:
    """A stored run is reused only when it ran this recipe. How often the cell is evaluated
    does not count: evaluations draw from their own generators, so the training, the SFT and
    the final figures are the same whatever the cadence (only the curve has fewer points). A
    setting the stored run does not list did not exist when it ran; the run is taken as made
    with the value that keeps the old behaviour (LEGACY; any value of the others does). The
    settings of corrections do not count in a run without an operator (nothing to correct)."""
    skip = ("eval_every",) + (() if spec.get("operator") else OPERATOR_ONLY)

    def same(part: str) -> bool:
        have = stored.get(part) or {}
        return all(have.get(k, LEGACY.get(k, v)) == v for k, v in spec[part].items()
                   if k not in skip)
    return same("grpo") and same("run") and same("sampler") and \
        stored.get("operator") == spec.get("operator")


def run_one(job: dict, args) -> dict:
    out = Path(job["out"])
    if out.is_file() and not args.rerun:
        stored = json.loads(out.read_text())        # the same SFT start (cache key) and recipe
        if Path(stored.get("checkpoint", "")).name == Path(job["ckpt"]).name and \
                same_recipe(stored, job["spec"]):
            return stored
        print(f"{out.name}: stored with another recipe; kept as .stale.json, running again",
              flush=True)
        out.replace(out.with_suffix(".stale.json"))
    cmd = [sys.executable, __file__, "--child-task", job["task"], "--child-seed",
           str(job["seed"]), "--child-ckpt", job["ckpt"], "--child-out", str(out),
           "--child-spec", json.dumps(job["spec"])]
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                            env=dict(os.environ, OMP_NUM_THREADS="1")).returncode
    if rc:
        raise RuntimeError(f"run {out.name} failed (exit {rc}); see {log}")
    print(log.read_text().strip().splitlines()[-1], flush=True)
    return json.loads(out.read_text())


def signal_fraction(runs: list[dict]) -> float:
    """Fraction of groups with reward variance (the ones GRPO learns from) over all updates."""
    groups = sum(u["groups"] for r in runs for u in r["updates"])
    return 1.0 - sum(u["groups_skipped"] for r in runs for u in r["updates"]) / max(1, groups)


def aggregate(runs: list[dict], name: str, group_key: str) -> dict:
    import numpy as np
    by = {}
    for r in runs:
        by.setdefault(r[group_key], []).append(r)
    summary = {}
    for k, rs in by.items():
        lift = [r["final_success"] - r["sft_success"] for r in rs]
        summary[k] = {
            "runs": len(rs), "episodes_per_run": rs[0]["episodes"],
            "sft_success_mean": float(np.mean([r["sft_success"] for r in rs])),
            "final_success_mean": float(np.mean([r["final_success"] for r in rs])),
            "lift_points_mean": float(100 * np.mean(lift)),
            "lift_points_min": float(100 * np.min(lift)),
            "heldout_sft_mean": float(np.mean([r["heldout_sft_success"] for r in rs])),
            "heldout_final_mean": float(np.mean([r["heldout_final_success"] for r in rs])),
            "heldout_kept_mean": float(np.mean([r["heldout_kept_success"] for r in rs])),
            "heldout_kept_lift_points_mean": float(100 * np.mean(
                [r["heldout_kept_success"] - r["heldout_sft_success"] for r in rs])),
            "kept_success_mean": float(np.mean([r["kept_success"] for r in rs])),
            "signal_group_fraction": signal_fraction(rs),
            "learner_seconds_per_update": float(np.mean([r["learner_seconds_per_update"]
                                                         for r in rs])),
            "update_rss_growth_mb": float(np.max([r["update_rss_growth_mb"] for r in rs])),
            "trainable_params": rs[0]["trainable_params"],
            "wall_seconds_mean": float(np.mean([r["wall_seconds"] for r in rs]))}
        if all(r.get("state_outcomes") for r in rs):       # runs with --state-rollouts
            for when in ("sft", "last"):
                n = sum(len(r["state_outcomes"][when]) for r in rs)
                for c in OUTCOME_CLASSES:
                    summary[k][f"{when}_states_{c}_fraction"] = sum(
                        r["state_outcomes"][f"{when}_classes"][c] for r in rs) / n
    drop = ("checkpoint", "learner_seconds")          # per-machine paths and raw totals
    return {"name": name, "group_key": group_key, "summary": summary,
            "runs": [{k: v for k, v in r.items() if k not in drop} for r in runs]}


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    groups = sorted(result["summary"])
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False,
                             sharey=True)
    for ax, g in zip(axes[0], groups):
        rs = [r for r in result["runs"] if r[result["group_key"]] == g]
        for r in rs:
            x, y = zip(*r["curve"])
            ax.plot(x, y, color="tab:blue", alpha=0.35, lw=1)
        xs = [x for x, _ in rs[0]["curve"]]
        mean = np.mean([[y for _, y in r["curve"]] for r in rs], axis=0)
        ax.plot(xs, mean, color="tab:blue", lw=2.2, label=f"mean of {len(rs)} seed(s)")
        ax.axhline(np.mean([r["sft_success"] for r in rs]), color="gray", ls="--", lw=1,
                   label="SFT start")
        ax.set_title(g, fontsize=10)
        ax.set_xlabel("GRPO episodes")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("deterministic success (cell)")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sft_starts(args, ap: argparse.ArgumentParser) -> dict[str, str]:
    """{task: the checkpoint its runs start from}: --checkpoint, or the SFT start built (or
    found in cache/sft) for each task."""
    if args.checkpoint is not None:
        if len(args.tasks) != 1 or not (args.checkpoint / "config.json").is_file():
            ap.error("--checkpoint needs one --tasks entry and a checkpoint directory")
        return {args.tasks[0]: str(args.checkpoint.resolve())}
    return {t: str(task_sft_start(t, ROOT / "cache" / "sft", args.goal_marker_radius,
                                  args.demos, args.sft_steps, args.architecture))
            for t in args.tasks}


def recipe_options(ap: argparse.ArgumentParser) -> None:
    """The SFT start's options and the run, learner and sampler recipe, as options."""
    ap.add_argument("--demos", type=int, default=0, help="SFT demos (0: per task, TASK_SFT)")
    ap.add_argument("--sft-steps", type=int, default=3000, help="SFT steps, with --demos")
    ap.add_argument("--architecture", default="tinyvla", choices=("tinyvla", "diffusion_policy"),
                    help="the SFT start's model: the package's TinyVLA-shaped one or the "
                    "LeRobot-shaped DiffusionPolicy (what an imported LeRobot policy runs on)")
    ap.add_argument("--checkpoint", type=Path, help="start from this checkpoint instead of "
                    "building the SFT start (one task; e.g. an imported policy: python -m "
                    "tinyvla_grpo_ros.import_policy)")
    add_arguments(ap.add_argument_group("run (sim/metaworld_grpo.RunConfig)"), RunConfig,
                  skip=("preset",))
    add_arguments(ap.add_argument_group("learner (core/config.GRPOConfig)"), GRPOConfig,
                  skip=("device",))
    group = ap.add_argument_group("sampler (core/config.SamplerConfig)")
    add_arguments(group, SamplerConfig, only=SamplerConfig.RECIPE, skip=SamplerConfig.ADOPTED,
                  default_from="the SFT checkpoint's")
    add_arguments(group, SamplerConfig, only=SamplerConfig.ADOPTED)      # the recipe's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--presets", nargs="+", default=[RunConfig.preset], choices=PRESETS)
    ap.add_argument("--out", default="learning", help="results name under bench/results")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    ap.add_argument("--rerun", action="store_true", help="ignore finished runs on disk")
    ap.add_argument("--quick", action="store_true", help="one short run (make bench)")
    recipe_options(ap)
    for a in ("task", "seed", "ckpt", "out", "spec"):
        ap.add_argument(f"--child-{a}", help=argparse.SUPPRESS,
                        type=int if a == "seed" else str)
    args = ap.parse_args()
    if args.child_task:
        child(args)
        return
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.quick:
        args.tasks, args.seeds, args.out, args.rerun = ["reach-v3"], [0], "learning_quick", True
        args.demos, args.sft_steps, args.episodes, args.cell, args.heldout = 8, 300, 32, 8, 4
        args.eval_every = 1
    try:           # bad settings: refused now, not in every run after minutes of SFT
        specs = {p: run_spec(args, p) for p in args.presets}
    except ValueError as e:
        ap.error(str(e))
    t0 = time.time()
    ckpts = sft_starts(args, ap)
    run_dir = RESULTS / "runs" / args.out
    jobs = [{"task": t, "seed": s, "spec": specs[p], "ckpt": ckpts[t],
             "out": str(run_dir / f"{t}-s{s}-{slug(p)}.json")}
            for t in args.tasks for p in args.presets for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: run_one(j, args), jobs))
    key = "preset" if len(args.presets) > 1 else "task"
    result = aggregate(runs, args.out, key)
    result["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    result["wall_seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / f"{args.out}.png",
         f"GRPO from SFT: {', '.join(args.presets)}; seeds {args.seeds}")
    for k, s in sorted(result["summary"].items()):
        print(f"{k}: SFT {s['sft_success_mean']:.2f} -> {s['final_success_mean']:.2f} after "
              f"{s['episodes_per_run']} episodes ({s['runs']} runs; held-out "
              f"{s['heldout_sft_mean']:.2f} -> {s['heldout_final_mean']:.2f}, kept version "
              f"{s['heldout_kept_mean']:.2f}); learner "
              f"{s['learner_seconds_per_update']:.2f} s/update")
    p = args.out
    summ = result["summary"]
    for k, s in sorted(summ.items()):
        print(f"{p}_{slug(k)}_sft={s['sft_success_mean']:.3f}")
        print(f"{p}_{slug(k)}_final={s['final_success_mean']:.3f}")
        print(f"{p}_{slug(k)}_lift_points={s['lift_points_mean']:.1f}")
        print(f"{p}_{slug(k)}_heldout_sft={s['heldout_sft_mean']:.3f}")
        print(f"{p}_{slug(k)}_heldout_final={s['heldout_final_mean']:.3f}")
        print(f"{p}_{slug(k)}_heldout_kept={s['heldout_kept_mean']:.3f}")
        print(f"{p}_{slug(k)}_signal_group_fraction={s['signal_group_fraction']:.2f}")
        for when in ("sft", "last"):
            for c in OUTCOME_CLASSES:
                if f"{when}_states_{c}_fraction" in s:
                    print(f"{p}_{slug(k)}_{when}_states_{c}_fraction="
                          f"{s[f'{when}_states_{c}_fraction']:.2f}")
        if key == "preset":
            print(f"{p}_{slug(k)}_learner_s_per_update={s['learner_seconds_per_update']:.3f}")
            print(f"{p}_{slug(k)}_trainable_params={s['trainable_params']}")
            print(f"{p}_{slug(k)}_update_rss_growth_mb={s['update_rss_growth_mb']:.1f}")
    lifts = [s["lift_points_mean"] for s in summ.values()]
    print(f"{p}_episodes_per_run={runs[0]['episodes']}")
    print(f"{p}_runs={len(runs)}")
    print(f"{p}_mean_lift_points={sum(lifts) / len(lifts):.1f}")
    print(f"{p}_worst_lift_points={min(s['lift_points_min'] for s in summ.values()):.1f}")
    kl = [s["heldout_kept_lift_points_mean"] for s in summ.values()]
    print(f"{p}_heldout_kept_mean_lift_points={sum(kl) / len(kl):.1f}")
    print(f"{p}_heldout_kept_worst_task_lift_points={min(kl):.1f}")
    print(f"{p}_wall_min={result['wall_seconds'] / 60:.1f}")


if __name__ == "__main__":
    main()
