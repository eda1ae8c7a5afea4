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
tinyvla_grpo_ros/sim/sft_start.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tinyvla_grpo_ros.core.adapters import PRESETS
from tinyvla_grpo_ros.core.init_states import OUTCOME_CLASSES, SAMPLING_MODES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TASKS = ("reach-v3", "button-press-topdown-v3", "push-v3")
# SFT starting point per task: (demos, steps), for a decent but clearly imperfect policy. Measured
# (deterministic success on 20 held-out init states): button-press-topdown 60 x 3000 -> 1.00;
# drawer-close 60 x 3000 -> 1.00 and 15 x 1500 -> 1.00 (dropped: nothing left to learn).
SFT = {"reach-v3": (60, 3000), "button-press-topdown-v3": (10, 1000), "push-v3": (60, 3000)}


def slug(s: str) -> str:
    return s.replace("+", "_").replace("-", "_")


def grpo_config(args, preset: str):
    """The learner settings of one run (GRPOConfig checks them itself)."""
    from tinyvla_grpo_ros.core.learner import GRPOConfig
    return GRPOConfig(group_size=args.group_size, lr=args.lr, epochs=args.epochs,
                      minibatch_size=args.minibatch, micro_batch_size=args.minibatch,
                      kl_coef=args.kl_coef if preset == "adapters" else 0.0,
                      target_kl=args.target_kl, warmup_steps=args.warmup_steps,
                      base_lr_scale=args.base_lr_scale,
                      loss_aggregation=args.loss_aggregation, ratio=args.ratio,
                      elbo_samples=args.elbo_samples,
                      negative_advantage_scale=args.negative_advantage_scale,
                      noise_prior_lr_scale=args.noise_prior_lr_scale, device="cpu")


def child(args) -> None:
    import torch
    torch.set_num_threads(1)
    from tinyvla_grpo_ros.sim.metaworld_grpo import run_metaworld_grpo
    grpo = grpo_config(args, args.child_preset)
    res = run_metaworld_grpo(args.child_ckpt, args.child_task, args.child_seed, args.episodes,
                             args.child_preset, grpo, args.groups_per_update, args.cell,
                             args.heldout, args.eval_every,
                             sampler_overrides={"stochastic_steps": args.stochastic_steps,
                                                "min_sampling_std": args.noise_std,
                                                "min_logprob_std": args.noise_std,
                                                "init_noise_scale": args.init_noise_scale},
                             log=lambda s: print(s, file=sys.stderr, flush=True),
                             goal_marker_radius=args.goal_marker_radius,
                             init_sampling=args.init_sampling,
                             state_rollouts=args.state_rollouts,
                             group_init_noise=bool(args.group_init_noise),
                             shuffle_rewards=bool(args.shuffle_rewards),
                             eval_draws=args.eval_draws, noise_prior=bool(args.noise_prior),
                             progress_weight=args.progress_weight,
                             explore_window=args.explore_window)
    out = Path(args.child_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


def require_positive(ap: argparse.ArgumentParser, args, names: tuple[str, ...]) -> None:
    """Refuse counts below 1 at once, before minutes of SFT and rollouts, not after them."""
    for name in names:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def sft_checkpoint(task: str, args) -> Path:
    from tinyvla_grpo_ros.sim.sft_start import build_sft_start
    demos, steps = (args.demos, args.sft_steps) if args.demos else SFT.get(task, (60, 3000))
    return build_sft_start(task, demos, steps, cache=ROOT / "cache" / "sft",
                           goal_marker_radius=args.goal_marker_radius)


def run_one(job: dict, args, passthrough: list[str]) -> dict:
    out = Path(job["out"])
    if out.is_file() and not args.rerun:
        return json.loads(out.read_text())
    cmd = [sys.executable, __file__, "--child-task", job["task"], "--child-seed",
           str(job["seed"]), "--child-preset", job["preset"], "--child-ckpt", job["ckpt"],
           "--child-out", str(out)] + passthrough
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
    keep = ("task", "seed", "preset", "sft_success", "final_success", "best_success",
            "episodes", "heldout_sft_success", "heldout_final_success", "curve",
            "explore_curve", "versions", "wall_seconds", "learner_seconds_per_update",
            "trainable_params", "update_rss_growth_mb", "grpo", "groups_per_update",
            "sft_checkpoint_success", "cell", "updates", "heldout", "kept_version",
            "kept_episodes", "kept_success", "heldout_kept_success", "sampler", "init_sampling",
            "state_outcomes", "group_init_noise", "shuffle_rewards", "eval_draws",
            "eval_draw_success", "noise_prior", "progress_weight", "explore_window")
    return {"name": name, "group_key": group_key, "summary": summary,
            "runs": [{k: r.get(k) for k in keep} for r in runs]}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--presets", nargs="+", default=["adapters+head+norms"], choices=PRESETS)
    ap.add_argument("--out", default="learning", help="results name under bench/results")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    ap.add_argument("--rerun", action="store_true", help="ignore finished runs on disk")
    ap.add_argument("--quick", action="store_true", help="one short run (make bench)")
    ap.add_argument("--demos", type=int, default=0, help="SFT demos (0: per task, SFT above)")
    ap.add_argument("--sft-steps", type=int, default=3000, help="SFT steps, with --demos")
    ap.add_argument("--goal-marker-radius", type=float, default=0.04)
    grp = ap.add_argument_group("per run (passed to each run)")
    grp.add_argument("--episodes", type=int, default=384)
    grp.add_argument("--group-size", type=int, default=8)
    grp.add_argument("--groups-per-update", type=int, default=2)
    grp.add_argument("--cell", type=int, default=30, help="init states in the task's cell")
    grp.add_argument("--heldout", type=int, default=20)
    grp.add_argument("--eval-every", type=int, default=4, help="updates between evaluations")
    grp.add_argument("--eval-draws", type=int, default=2,
                     help="x_K draws each evaluation averages (paired: the same draws for "
                          "every version of a run)")
    grp.add_argument("--lr", type=float, default=1e-3, help="LoRA lr (Adam)")
    grp.add_argument("--epochs", type=int, default=4)
    grp.add_argument("--minibatch", type=int, default=128)
    grp.add_argument("--kl-coef", type=float, default=0.0)
    grp.add_argument("--target-kl", type=float, default=0.05)
    grp.add_argument("--warmup-steps", type=int, default=10)
    grp.add_argument("--stochastic-steps", type=int, default=3, help="K': noisy denoising steps")
    grp.add_argument("--noise-std", type=float, default=0.1, help="sampling/scoring std floor")
    grp.add_argument("--init-noise-scale", type=float, default=1.0,
                     help="x_K ~ N(0, s^2): < 1 leaves more of the randomness to the scored steps")
    grp.add_argument("--group-init-noise", type=int, default=0, choices=(0, 1),
                     help="1: a group's G rollouts share x_K at each decision index")
    grp.add_argument("--noise-prior", type=int, default=0, choices=(0, 1),
                     help="1: x_K ~ N(mu(c), s^2) with a learned mean, scored like a step "
                          "(core/sampler.py)")
    grp.add_argument("--noise-prior-lr-scale", type=float, default=0.3,
                     help="lr of the noise prior as a fraction of --lr")
    grp.add_argument("--loss-aggregation", default="chunk", choices=("chunk", "episode"),
                     help="mean over chunks, or every episode weighs the same (core/grpo.py)")
    grp.add_argument("--ratio", default="chain", choices=("chain", "elbo"),
                     help="what the clipped ratio compares (core/learner.py, point 6)")
    grp.add_argument("--elbo-samples", type=int, default=4,
                     help="(t, noise) draws per chunk for --ratio elbo")
    grp.add_argument("--negative-advantage-scale", type=float, default=1.0,
                     help="x negative advantages (0: learn from a group's better episodes only)")
    grp.add_argument("--shuffle-rewards", type=int, default=0, choices=(0, 1),
                     help="1: the null experiment: each group's outcomes are credited to its "
                          "episodes in a random order (how far updates alone move success)")
    grp.add_argument("--progress-weight", type=float, default=0.0,
                     help="reward of a failure = this x its progress (Meta-World's shaped "
                          "reward / 10, the episode's best); 0: the success bit alone")
    grp.add_argument("--explore-window", type=int, default=0,
                     help="W > 0: each group explores in W decisions only (drawn per group), "
                          "deterministic elsewhere, x_K shared in the group (metaworld_grpo)")
    grp.add_argument("--init-sampling", default="informative", choices=SAMPLING_MODES,
                     help="how each update draws its init states (core/init_states.py)")
    grp.add_argument("--state-rollouts", type=int, default=0,
                     help="stochastic rollouts per cell state at SFT and at the last version: "
                          "how many states are never / sometimes / always solved (0 = skip)")
    grp.add_argument("--base-lr-scale", type=float, default=0.03,
                     help="lr of head and norms as a fraction of --lr")
    for a in ("task", "seed", "preset", "ckpt", "out"):
        ap.add_argument(f"--child-{a}", help=argparse.SUPPRESS,
                        type=int if a == "seed" else str)
    args = ap.parse_args()
    if args.child_task:
        child(args)
        return
    require_positive(ap, args, ("jobs", "episodes", "groups_per_update", "cell", "heldout",
                                "eval_every", "eval_draws", "epochs", "minibatch"))
    if args.explore_window < 0:
        ap.error(f"--explore-window must be >= 0, got {args.explore_window}")
    from tinyvla_grpo_ros.core.grpo import outcome_reward
    for preset in args.presets:     # bad learner settings: refused now, not in every run
        try:
            grpo_config(args, preset)
            outcome_reward(False, 0.0, args.progress_weight)
        except ValueError as e:
            ap.error(str(e))
    if args.quick:
        args.tasks, args.seeds, args.out, args.rerun = ["reach-v3"], [0], "learning_quick", True
        args.demos, args.sft_steps, args.episodes, args.cell, args.heldout = 8, 300, 32, 8, 4
        args.eval_every = 1
    passthrough = []
    for a in ("episodes", "group_size", "groups_per_update", "cell", "heldout", "eval_every",
              "lr", "epochs", "minibatch", "kl_coef", "target_kl", "warmup_steps",
              "base_lr_scale", "stochastic_steps", "noise_std", "goal_marker_radius",
              "init_sampling", "loss_aggregation", "state_rollouts", "init_noise_scale",
              "group_init_noise", "ratio", "elbo_samples",
              "negative_advantage_scale", "shuffle_rewards", "eval_draws", "noise_prior",
              "noise_prior_lr_scale", "progress_weight", "explore_window"):
        passthrough += [f"--{a.replace('_', '-')}", str(getattr(args, a))]
    t0 = time.time()
    ckpts = {t: str(sft_checkpoint(t, args)) for t in args.tasks}
    run_dir = RESULTS / "runs" / args.out
    jobs = [{"task": t, "seed": s, "preset": p, "ckpt": ckpts[t],
             "out": str(run_dir / f"{t}-s{s}-{slug(p)}.json")}
            for t in args.tasks for p in args.presets for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: run_one(j, args, passthrough), jobs))
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
