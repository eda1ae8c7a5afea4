"""Sustained load on policy_node: a 30 Hz 224x224 camera, a 10 Hz policy, episodes back to back.

    python bench/bench_load.py              # 10 minutes (the reliability goal)
    python bench/bench_load.py --quick      # 1 minute (make bench)
    python bench/bench_load.py --learner-beside   # with a GRPO learner training on the machine

A real policy_node process (tiny preset; its model takes the 224 px frames and resizes them)
decides at most once per period (decision_period_s default: executed_steps / control_rate_hz =
0.1 s) however fast the camera runs, and pipelines its chunks (`--pipeline-lead`, the node's
pipeline_lead_s: each decision starts that long before the current chunk ends). This harness is
the camera (rgb8, sensor QoS), the joint
states, and an episode manager that runs 20 s episodes with 1 s pauses (a hold at every end).
Every 5 s it samples the node's resident memory, threads and open files from /proc, and its
/diagnostics (inference / loader queue lengths, missed decisions, holds).

    load_rss_growth_mb_per_min  slope of a least-squares line through RSS after the first 20 %
    load_rss_start_mb, load_rss_end_mb, load_threads_max, load_fds_max
    load_camera_hz, load_decision_hz, load_chunk_latency_p95_ms (chunk stamp -> received)
    load_inference_queue_max, load_loader_queue_max, load_missed_decisions, load_watchdog_holds,
    load_late_chunks (a pipelined chunk computed after it was due: the arm waited)
With --learner-beside a second process runs GRPO updates (tiny preset, adapters+head+norms,
synthetic groups of 8 x 16 chunks) back to back for the whole run, on the same two cores.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState

from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, PolicyNodeConfig, SamplerConfig
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.launcher import node_command
from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE, numpy_to_image
from tinyvla_grpo_ros.sim.metaworld_scene import JOINT_NAMES

ROOT = Path(__file__).resolve().parents[1]
CAMERA_HZ, EPISODE_S, PAUSE_S, SAMPLE_S = 30.0, 20.0, 1.0, 5.0


def proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kv = dict(line.split(":", 1) for line in status if ":" in line)
    return {"rss_mb": int(kv["VmRSS"].split()[0]) / 1024, "threads": int(kv["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def plot(samples, path: Path, minutes: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [x[0] / 60 for x in samples]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(t, [x[1]["rss_mb"] for x in samples], label="policy_node RSS (MB)")
    ax2 = ax.twinx()
    ax2.plot(t, [x[1]["threads"] for x in samples], color="tab:orange", label="threads")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax2.set_ylabel("threads")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax.set_title(f"policy_node under a 30 Hz 224 px camera, 10 Hz policy ({minutes:.0f} min)",
                 fontsize=9)
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def learner_child() -> None:
    """GRPO updates back to back until killed: the learner's load beside the policy."""
    from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig
    from tinyvla_grpo_ros.core.config import GRPOConfig
    from tinyvla_grpo_ros.core.learner import GRPOLearner
    from tinyvla_grpo_ros.core.sampler import DiffusionSampler
    from tinyvla_grpo_ros.core.synthetic import synthetic_groups
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyVLAPolicy(ModelConfig.preset("tiny", state_dim=9, action_dim=4))
    sampler = DiffusionSampler(model.config, SamplerConfig(executed_steps=4), sft_model=model)
    policy = AdaptedPolicy(model, AdapterConfig(preset="adapters+head+norms"), ["reach-v3"])
    learner = GRPOLearner(policy, sampler, GRPOConfig(device="cpu", target_kl=0.0))
    groups = [g for k in range(16) for g in synthetic_groups(policy, sampler, 1, 8, seed=k,
                                                             task="reach-v3")]
    while True:
        learner.update(groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 minute instead of 10")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=224, help="camera width = height (px)")
    ap.add_argument("--pipeline-lead", type=float, default=PolicyNodeConfig.pipeline_lead_s,
                    help="policy_node's pipeline_lead_s (0 = decide when a chunk ends; "
                    "default: the recipe's)")
    ap.add_argument("--learner-beside", action="store_true",
                    help="a GRPO learner trains in another process meanwhile")
    ap.add_argument("--learner-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.learner_child:
        return learner_child()
    minutes = 1.0 if args.quick else args.minutes
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 40))
    tmp = Path(tempfile.mkdtemp(prefix="bench_load_"))
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp / "sft", TinyVLAPolicy(cfg), SamplerConfig(executed_steps=4))
    log = open(tmp / "policy_node.log", "w")
    proc = subprocess.Popen(node_command("policy_node", ROOT / "config" / "sim_loop.yaml", {
        "checkpoint": str(ckpt), "adapter_root": str(tmp / "adapters"),
        "trainable_preset": "adapters", "control_rate_hz": "40.0", "executed_steps": "4",
        "decision_period_s": "-1.0", "stale_after_s": "0.5",
        "pipeline_lead_s": str(args.pipeline_lead)}), stdout=log, stderr=subprocess.STDOUT)
    learner = subprocess.Popen([sys.executable, __file__, "--learner-child"],
                               stdout=subprocess.DEVNULL) if args.learner_beside else None
    rclpy.init()
    node = rclpy.create_node("load_harness")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    pub_img = node.create_publisher(Image, "image_raw", qos_profile_sensor_data)
    pub_js = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    pub_ep = node.create_publisher(EpisodeState, "episode_state", LATCHED)
    chunks, latency, diag = [], [], {}

    def on_chunk(m: ActionChunk) -> None:
        if m.horizon:
            now = node.get_clock().now().nanoseconds
            latency.append((now - Time.from_msg(m.header.stamp).nanoseconds) * 1e-6)
            chunks.append(time.monotonic())
    node.create_subscription(ActionChunk, "action_chunk", on_chunk, RELIABLE)
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diag.update(
        {kv.key: kv.value for s in m.status for kv in s.values}), 10)
    frames = [np.random.default_rng(i).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
              for i in range(8)]
    samples, queue_max = [], {"inference_queue": 0, "loader_queue": 0}
    sent = 0
    try:
        ready_by = time.monotonic() + 120          # the clock starts when the node is up
        while not diag and time.monotonic() < ready_by:
            if proc.poll() is not None:
                raise RuntimeError(f"policy_node exited {proc.returncode}; see {log.name}")
            ex.spin_once(timeout_sec=0.1)
        t0 = time.monotonic()
        end = t0 + 60 * minutes
        next_frame, next_sample, episode, ep_started, running = t0, t0, 0, t0, False
        while time.monotonic() < end:
            now = time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"policy_node exited {proc.returncode}; see {log.name}")
            if not running and now - ep_started >= PAUSE_S:
                episode += 1
                running, ep_started = True, now
                pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, task_id="reach-v3",
                                            episode_id=f"load-{episode}"))
            elif running and now - ep_started >= EPISODE_S:
                running, ep_started = False, now
                pub_ep.publish(EpisodeState(state=EpisodeState.IDLE, task_id="reach-v3",
                                            episode_id=f"load-{episode}"))
            if now >= next_frame:
                stamp = node.get_clock().now().to_msg()
                js = JointState(name=list(JOINT_NAMES), position=[0.0] * 9)
                js.header.stamp = stamp
                pub_js.publish(js)
                img = numpy_to_image(frames[sent % len(frames)], None)
                img.header.stamp = stamp
                pub_img.publish(img)
                sent += 1
                next_frame += 1.0 / CAMERA_HZ
            if now >= next_sample:
                samples.append((now - t0, proc_stats(proc.pid)))
                for k in queue_max:
                    queue_max[k] = max(queue_max[k], int(diag.get(k, 0)))
                next_sample += SAMPLE_S
            ex.spin_once(timeout_sec=max(0.0, min(next_frame, next_sample) - time.monotonic()))
        elapsed = time.monotonic() - t0
    finally:
        if learner is not None:
            learner.kill()
        proc.send_signal(2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        node.destroy_node()
        rclpy.shutdown()
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1]["rss_mb"] for s in samples])
    keep = t >= 0.2 * t[-1]
    slope = float(np.polyfit(t[keep] / 60.0, rss[keep], 1)[0]) if keep.sum() >= 2 else 0.0
    running_s = sum(min(EPISODE_S, elapsed - k * (EPISODE_S + PAUSE_S) - PAUSE_S)
                    for k in range(int(elapsed // (EPISODE_S + PAUSE_S)) + 1)
                    if elapsed - k * (EPISODE_S + PAUSE_S) - PAUSE_S > 0)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = ("load_quick" if args.quick else "load") + ("_learner" if args.learner_beside else "")
    (out / f"{name}.json").write_text(json.dumps({
        "minutes": elapsed / 60, "camera_hz": CAMERA_HZ, "episodes": episode, "frames": sent,
        "chunks": len(chunks), "rss_growth_mb_per_min": slope,
        "samples": [{"t_s": round(tt, 1)} | st for tt, st in samples],
        "queue_max": queue_max, "diagnostics": diag}, indent=1) + "\n")
    plot(samples, out / f"{name}.png", minutes)
    print(f"{minutes:.1f} min, {episode} episodes, {sent} frames, {len(chunks)} chunks; "
          f"RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB (log: {log.name})")
    print(f"load_minutes={elapsed / 60:.1f}")
    print(f"load_camera_hz={sent / elapsed:.1f}")
    print(f"load_images_received_hz={int(diag.get('images', 0)) / elapsed:.1f}")
    print(f"load_decision_hz={len(chunks) / max(running_s, 1e-9):.2f}")
    print(f"load_rss_start_mb={rss[keep][0]:.1f}")
    print(f"load_rss_end_mb={rss[-1]:.1f}")
    print(f"load_rss_growth_mb_per_min={slope:.3f}")
    print(f"load_threads_max={max(s[1]['threads'] for s in samples)}")
    print(f"load_fds_max={max(s[1]['fds'] for s in samples)}")
    print(f"load_chunk_latency_p95_ms={float(np.percentile(latency, 95)):.2f}")
    print(f"load_inference_queue_max={queue_max['inference_queue']}")
    print(f"load_loader_queue_max={queue_max['loader_queue']}")
    print(f"load_missed_decisions={diag.get('missed', 'n/a')}")
    print(f"load_watchdog_holds={diag.get('watchdog_holds', 'n/a')}")
    print(f"load_late_chunks={diag.get('late', 'n/a')}")


if __name__ == "__main__":
    sys.exit(main())
