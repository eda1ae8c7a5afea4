"""The nodes over real DDS (localhost, own domain), measured from a harness process.

    decision_latency_p50/p95/p99_ms  image published -> ActionChunk received, tiny preset, CPU
                             (goal: p95 <= 50, p99 <= 100)
    hotswap_ms               AdapterUpdate published -> policy reports the version active (median)
    hotswap_lock_ms          of which the decision path was blocked (in-place copy, median)
    missed_decisions         decision points missed during the swaps (must be 0)
    missed_decisions_by_swap of which a swap held the model longer than a decision period
    chunk_transport_p95_ms   ActionChunk with one 224x224 image, process to process (goal <= 5)
"""
import argparse
import os
import statistics
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
from sensor_msgs.msg import Image, JointState
from tinyvla_grpo_interfaces.msg import ActionChunk, AdapterUpdate, EpisodeState

from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig, save_adapter_version
from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.launcher import node_command
from tinyvla_grpo_ros.nodes.ros_common import LATCHED, LATCHED_HISTORY, RELIABLE, numpy_to_image
from tinyvla_grpo_ros.sim.metaworld_scene import JOINT_NAMES

ROOT = Path(__file__).resolve().parents[1]


def p95(xs):
    return float(np.percentile(xs, 95))


def spin(ex, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ex.spin_once(timeout_sec=0.002)


def policy_bench(tmp: Path, decisions: int, swaps: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", state_dim=9, action_dim=4)
    model = TinyVLAPolicy(cfg)
    ckpt = save_checkpoint(tmp / "sft", model, SamplerConfig(executed_steps=4))
    adapters = tmp / "adapters"
    policy = AdaptedPolicy(model, AdapterConfig(preset="adapters"), ["reach-v3"])
    for v in range(1, swaps + 1):                       # versions to swap to, written up front
        with torch.no_grad():
            for p in policy.trainable_parameters():
                p.add_(0.01)
        save_adapter_version(policy, adapters, v, parent=v - 1)
    proc = subprocess.Popen(node_command("policy_node", ROOT / "config" / "sim_loop.yaml", {
        "checkpoint": str(ckpt), "adapter_root": str(adapters), "trainable_preset": "adapters",
        "swap_between": "chunks"}), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node("bench_harness")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    pub_img = node.create_publisher(Image, "image_raw", qos_profile_sensor_data)
    pub_js = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    pub_ep = node.create_publisher(EpisodeState, "episode_state", LATCHED)
    pub_up = node.create_publisher(AdapterUpdate, "adapter_update", LATCHED_HISTORY)
    got, active, missed = [], {}, {"missed": [], "missed_by_swap": []}
    node.create_subscription(ActionChunk, "action_chunk",
                             lambda m: got.append(time.perf_counter()) if m.episode_id else None,
                             RELIABLE)
    node.create_subscription(AdapterUpdate, "active_adapter",
                             lambda m: active.setdefault(m.version, time.perf_counter()), LATCHED)
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: [
        missed[kv.key].append(int(kv.value)) for s in m.status for kv in s.values
        if kv.key in missed], 10)
    pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id="bench",
                                task_id="reach-v3"))
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)

    def observe():
        stamp = node.get_clock().now().to_msg()
        js = JointState(name=list(JOINT_NAMES), position=[0.0] * 9)
        js.header.stamp = stamp
        pub_js.publish(js)
        pub_img.publish(numpy_to_image(img, stamp))
        return time.perf_counter()

    try:
        deadline = time.monotonic() + 60
        while 0 not in active and time.monotonic() < deadline:
            spin(ex, 0.1)
        lat = []
        for i in range(decisions + 10):                  # the first 10 warm up
            n0 = len(got)
            t0 = observe()
            while len(got) == n0 and time.perf_counter() - t0 < 5:
                ex.spin_once(timeout_sec=0.001)
            if len(got) > n0 and i >= 10:
                lat.append((got[-1] - t0) * 1e3)
            spin(ex, 0.01)
        print(f"decision latency over {len(lat)} decisions: p50 {np.median(lat):.1f} ms, "
              f"p95 {p95(lat):.1f} ms")
        print(f"decision_latency_p50_ms={np.median(lat):.1f}")
        print(f"decision_latency_p95_ms={p95(lat):.1f}")
        print(f"decision_latency_p99_ms={float(np.percentile(lat, 99)):.1f}")
        # swaps while decisions keep streaming at the node's decision rate (50 ms)
        swap_ms = []
        for v in range(1, swaps + 1):
            path = adapters / "reach-v3" / f"v{v:04d}"
            sha = (path / "meta.json").read_text().split('"sha256": "')[1][:64]
            t0 = time.perf_counter()
            pub_up.publish(AdapterUpdate(adapter_name="reach-v3", version=v,
                                         path=str(path), sha256=sha))
            while v not in active and time.perf_counter() - t0 < 10:
                observe()
                spin(ex, 0.05)
            swap_ms.append((active.get(v, float("nan")) - t0) * 1e3)
        spin(ex, 1.5)                                    # one more diagnostics message
        med = statistics.median(swap_ms)
        print(f"hot-swap end to end over {swaps} swaps: median {med:.1f} ms")
        print(f"hotswap_ms={med:.1f}")
        for key, name in (("missed", "missed_decisions"),
                          ("missed_by_swap", "missed_decisions_by_swap")):
            print(f"{name}={max(missed[key]) if missed[key] else -1}")
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.send_signal(2)
        proc.wait(timeout=20)


TRANSPORT_CHILD = r"""
import sys, time, numpy as np, rclpy
from tinyvla_grpo_interfaces.msg import ActionChunk
from tinyvla_grpo_ros.nodes.ros_common import RELIABLE, numpy_to_image
rclpy.init(); n = rclpy.create_node("chunk_source")
pub = n.create_publisher(ActionChunk, "bench_chunk", RELIABLE)
img = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
msg = ActionChunk(horizon=16, action_dim=7, actions=[0.0] * 112, chain=[0.0] * 4 * 112,
                  log_probs=[0.0] * 3, images=[numpy_to_image(img, None)])
time.sleep(2.0)
for i in range(int(sys.argv[1])):
    msg.chunk_index = i
    msg.header.stamp = n.get_clock().now().to_msg()
    pub.publish(msg)
    time.sleep(0.02)
time.sleep(1.0)
"""


def transport_bench(count: int) -> None:
    rclpy.init()
    node = rclpy.create_node("chunk_sink")
    lat = []

    def on(m):
        now = node.get_clock().now().nanoseconds
        lat.append((now - (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec)) / 1e6)
    node.create_subscription(ActionChunk, "bench_chunk", on, RELIABLE)
    child = subprocess.Popen([sys.executable, "-c", TRANSPORT_CHILD, str(count)])
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    while child.poll() is None:
        ex.spin_once(timeout_sec=0.01)
    node.destroy_node()
    rclpy.shutdown()
    print(f"ActionChunk + 224x224 image, {len(lat)}/{count} received: p50 {np.median(lat):.2f} "
          f"ms, p95 {p95(lat):.2f} ms")
    print(f"chunk_transport_p95_ms={p95(lat):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(120 + os.getpid() % 50))   # never the default 0
    transport_bench(100 if args.quick else 500)
    with tempfile.TemporaryDirectory() as tmp:
        policy_bench(Path(tmp), decisions=50 if args.quick else 300, swaps=5 if args.quick else 20)


if __name__ == "__main__":
    main()
