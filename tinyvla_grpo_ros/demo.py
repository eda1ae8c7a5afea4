"""`make demo`: the closed GRPO loop in the built-in MuJoCo simulation.

1. the SFT starting point: scripted Meta-World demonstrations -> SFT checkpoint (cached in
   cache/sft, measured on held-out init states);
2. sim_node, policy_node, episode_manager_node and learner_node as separate processes over DDS
   (config/sim_loop.yaml, as launch/sim.launch.py starts them), for `--groups` groups of G;
3. a table of success rate per adapter version: exploration (stochastic sampler, the episodes
   learned from, through the nodes) and the deterministic success of every version on --heldout
   init states never trained on, in the fast lock-step runner (sim/evaluate.py), each with its
   95% interval, and the paired difference of the last version against the first.
Adapters and rollouts stay on disk under --out. ARGS="--groups 4 --group-size 4" make demo.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor

from .core.adapters import AdapterConfig
from .core.checkpoint import read_configs
from .core.config import SamplerConfig
from .core.intervals import paired_interval, wilson_interval
from .launcher import Launch, node_sections
from .sim.evaluate import evaluate_versions
from .sim.sft_start import EVAL_FIRST_ID, build_sft_start

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--groups", type=int, default=8, help="groups of G rollouts to run")
    ap.add_argument("--group-size", type=int, default=8, help="G")
    ap.add_argument("--heldout", type=int, default=100, help="held-out init states each "
                    "version is evaluated on after the loop (lock-step runner)")
    ap.add_argument("--eval-states", type=int, default=0, help="held-out init states the "
                    "episode manager also evaluates each version on, through the nodes")
    ap.add_argument("--demos", type=int, default=60, help="expert demonstrations for SFT")
    ap.add_argument("--sft-steps", type=int, default=3000)
    ap.add_argument("--architecture", default="tinyvla", choices=("tinyvla", "diffusion_policy"),
                    help="the SFT start's model: TinyVLA-shaped, or LeRobot's Diffusion Policy")
    ap.add_argument("--checkpoint", type=Path, help="start from this checkpoint instead of "
                    "building one (e.g. an imported policy: python -m "
                    "tinyvla_grpo_ros.import_policy)")
    ap.add_argument("--goal-marker-radius", type=float, default=0.04,
                    help="goal drawn this wide, m (rendering only; Meta-World's is 0.02)")
    ap.add_argument("--simulated-operator", action="store_true", help="the scripted expert "
                    "corrects exploring episodes through policy_node's intervene (sim_node's "
                    "simulated_operator); the table adds the share of steps it drove")
    ap.add_argument("--out", type=Path, default=Path("runs/demo"))
    ap.add_argument("--timeout-min", type=float, default=30.0)
    args = ap.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    t0 = time.time()
    if args.checkpoint is not None:
        ckpt = args.checkpoint.resolve()
        try:
            mcfg, scfg = read_configs(ckpt)
        except (FileNotFoundError, ValueError) as e:
            print(f"--checkpoint: {e}")
            return 2
        n_obs = mcfg.n_obs_steps
        # an imported policy executes what its source executed, not sim_loop.yaml's 4
        executed = {"executed_steps": scfg.executed_steps or mcfg.horizon - mcfg.action_offset}
    else:
        executed, n_obs = {}, 1
        ckpt = build_sft_start(args.task, args.demos, args.sft_steps,
                               cache=ROOT / "cache" / "sft",
                               goal_marker_radius=args.goal_marker_radius,
                               architecture=args.architecture)
    run = (args.out / time.strftime("%Y%m%d-%H%M%S")).resolve()
    (run / "logs").mkdir(parents=True)
    eval_ids = list(range(EVAL_FIRST_ID, EVAL_FIRST_ID + args.eval_states)) or [-1]
    ov = {
        "sim_node": {"task": args.task, "pace": "fast",
                     "goal_marker_radius": args.goal_marker_radius,
                     "simulated_operator": str(args.simulated_operator).lower()},
        "policy_node": {"checkpoint": ckpt, "tasks": f"[{args.task}]",
                        "adapter_root": run / "adapters"} | executed,
        "episode_manager_node": {"task": args.task, "group_size": args.group_size,
                                 "num_groups": args.groups, "store_root": run / "rollouts",
                                 "eval_init_state_ids": str(eval_ids)} | episode_chunks(executed),
        "learner_node": {"checkpoint": ckpt, "tasks": f"[{args.task}]",
                         "adapter_root": run / "adapters", "store_root": run / "rollouts",
                         "group_size": args.group_size}}
    if n_obs > 1:      # observation history: the sim as a robot, a streaming camera, a clock
        print(f"{ckpt.name} conditions on {n_obs} observation steps: sim_node runs in wall time "
              "with its camera streaming at 40 Hz, policy_node decides on its clock")
        ov["sim_node"] |= {"pace": "wall", "camera_hz": 40.0}
        ov["policy_node"]["decision_period_s"] = -1.0
    ov = {n: {k: str(v) for k, v in d.items()} for n, d in ov.items()}
    print(f"closed loop: {args.groups} groups x G={args.group_size} of {args.task}; logs in "
          f"{run / 'logs'}", flush=True)
    launch = Launch(ROOT / "config" / "sim_loop.yaml", ov, log_dir=run / "logs")
    rclpy.init()
    from tinyvla_grpo_interfaces.msg import AdapterUpdate, EpisodeOutcome, EpisodeState, GroupReady

    from .nodes.ros_common import LATCHED, LATCHED_HISTORY, RELIABLE
    node = rclpy.create_node("demo_monitor")
    explore, evals = defaultdict(list), defaultdict(list)
    steps = defaultdict(lambda: [0, 0])          # per version: [corrected, all] control steps
    groups, state = [], {"state": EpisodeState(), "last": time.time()}

    def on_outcome(m: EpisodeOutcome) -> None:
        (evals if m.group_id.startswith("eval-") else explore)[m.adapter_version].append(m.success)
        if not m.group_id.startswith("eval-"):
            steps[m.adapter_version][0] += m.corrected_steps
            steps[m.adapter_version][1] += m.step_count
        state["last"] = time.time()
        kind = "eval   " if m.group_id.startswith("eval-") else "explore"
        print(f"  [{time.time() - t0:6.0f} s] {kind} v{m.adapter_version:04d} init "
              f"{m.init_state_id:5d}: {'success' if m.success else 'failure'} "
              f"({m.chunk_count} chunks" + (f", {m.corrected_steps} steps corrected"
                                            if m.corrected_steps else "") + ")", flush=True)

    def on_update(m: AdapterUpdate) -> None:
        state["last"] = time.time()
        if m.metric_names:
            met = dict(zip(m.metric_names, m.metric_values))
            print(f"  learner -> v{m.version:04d} (loss {met.get('loss', 0):.4f}, approx_kl "
                  f"{met.get('approx_kl', 0):.4f}, {met.get('seconds', 0):.1f} s)", flush=True)

    node.create_subscription(EpisodeOutcome, "episode_outcome", on_outcome, RELIABLE)
    node.create_subscription(AdapterUpdate, "adapter_update", on_update, LATCHED_HISTORY)
    node.create_subscription(GroupReady, "group_ready", lambda m: groups.append(m.group_id),
                             LATCHED_HISTORY)
    node.create_subscription(EpisodeState, "episode_state",
                             lambda m: state.__setitem__("state", m), LATCHED)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    code = 0
    try:
        while True:
            ex.spin_once(timeout_sec=0.2)
            if (ended := launch.poll()) is not None:
                print(f"{ended[0]} exited with {ended[1]}; see {run / 'logs'}")
                code = 1
                break
            idle = state["state"].state == EpisodeState.IDLE
            if len(set(groups)) >= args.groups and idle and time.time() - state["last"] > 8:
                break
            if time.time() - t0 > args.timeout_min * 60:
                print(f"stopping after --timeout-min {args.timeout_min}")
                break
    except KeyboardInterrupt:
        code = 130
    finally:
        launch.stop()
        node.destroy_node()
        rclpy.shutdown()
    heldout = heldout_success(args, ckpt, run, executed)
    versions = sorted(set(explore) | set(evals) | set(heldout))
    rows = [{"version": v, "explore_episodes": len(explore[v]),
             "explore_success": sum(explore[v]) / len(explore[v]) if explore[v] else None,
             "corrected_step_share": steps[v][0] / steps[v][1] if steps[v][1] else None,
             "node_eval_episodes": len(evals[v]),
             "node_eval_success": sum(evals[v]) / len(evals[v]) if evals[v] else None,
             "heldout_states": len(heldout.get(v, [])),
             "heldout_success": float(np.mean(heldout[v])) if v in heldout else None,
             "heldout_ci95": wilson_interval(sum(heldout[v]), len(heldout[v]))
             if v in heldout else None}
            for v in versions]
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    ci = lambda r: "-" if r is None else f"[{r[0]:.2f}, {r[1]:.2f}]"  # noqa: E731
    print(f"\nsuccess rate per adapter version ({args.task}; explore = stochastic sampler, "
          f"through the nodes; held-out = deterministic, {args.heldout} init states never "
          "trained on, lock-step runner, 95% Wilson interval)")
    op = args.simulated_operator
    print("| version | explore episodes | explore success | " + (
        "steps corrected | " if op else "") + "held-out success | 95% interval |")
    print("|---|---|---|---|---|" + ("---|" if op else ""))
    for r in rows:
        print(f"| v{r['version']:04d} | {r['explore_episodes']} | {fmt(r['explore_success'])} | "
              + (f"{fmt(r['corrected_step_share'])} | " if op else "") +
              f"{fmt(r['heldout_success'])} | {ci(r['heldout_ci95'])} |")
    if len(heldout) >= 2:
        first, last = min(heldout), max(heldout)
        d, lo, hi = paired_interval(100 * (np.array(heldout[last], float) -
                                           np.array(heldout[first], float)))
        print(f"\nv{first:04d} {fmt(np.mean(heldout[first]))} {ci(rows[0]['heldout_ci95'])} -> "
              f"v{last:04d} {fmt(np.mean(heldout[last]))} "
              f"{ci(next(r for r in rows if r['version'] == last)['heldout_ci95'])}: "
              f"{d:+.1f} points, paired 95% interval [{lo:+.1f}, {hi:+.1f}] over the same "
              f"{len(heldout[last])} states and x_K draws")
    if any(evals.values()):
        print("node evaluation episodes: " + ", ".join(
            f"v{r['version']:04d} {fmt(r['node_eval_success'])} ({r['node_eval_episodes']})"
            for r in rows if r["node_eval_episodes"]))
    (run / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"\nadapters: {run / 'adapters'}\nrollouts: {run / 'rollouts'}\n"
          f"total {time.time() - t0:.0f} s")
    return code


def episode_chunks(executed: dict) -> dict:
    """The episode manager's max_chunks for a policy executing other than sim_loop.yaml's steps
    per chunk: the sim's max_steps in chunks."""
    if not executed:
        return {}
    max_steps = int(node_sections(ROOT / "config" / "sim_loop.yaml")["sim_node"]["max_steps"])
    return {"max_chunks": -(-max_steps // executed["executed_steps"])}


def heldout_success(args, ckpt: Path, run: Path, executed: dict) -> dict[int, list[bool]]:
    """Every stored version on --heldout init states, with the nodes' own settings."""
    if args.heldout <= 0:
        return {}
    nodes = node_sections(ROOT / "config" / "sim_loop.yaml")
    learner = nodes.get("learner_node", {})
    sampler = {k: v for k, v in (nodes.get("policy_node", {}) | executed).items()
               if k in SamplerConfig.RECIPE}
    cfg = AdapterConfig(preset=learner.get("trainable_preset", "adapters"),
                        rank=int(learner.get("lora_rank", 8)))
    print(f"\nevaluating every version on {args.heldout} held-out init states ...", flush=True)
    ids = list(range(EVAL_FIRST_ID + 1000, EVAL_FIRST_ID + 1000 + args.heldout))
    return evaluate_versions(ckpt, run / "adapters", args.task, cfg, ids, sampler,
                             goal_marker_radius=args.goal_marker_radius)


if __name__ == "__main__":
    raise SystemExit(main())
