"""Start node processes and talk to them from the test over real DDS (localhost, own domain)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor

ROOT = Path(__file__).resolve().parents[1]


def start_node(module: str, params: dict | None = None, ns: str = "", log: Path | None = None,
               params_file: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", f"tinyvla_grpo_ros.nodes.{module}", "--ros-args"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    for k, v in (params or {}).items():
        args += ["-p", f"{k}:={v}"]
    if ns:
        args += ["-r", f"__ns:={ns}"]
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(args, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out,
                            stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(2)                        # SIGINT, as Ctrl-C
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """A test-side node with its own context; spin_until(pred) drives callbacks."""

    def __init__(self, name: str = "test_client") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, pred, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return bool(pred())

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available")
        fut = client.call_async(request)
        self.executor.spin_until_future_complete(fut, timeout_sec=timeout)
        if not fut.done():
            raise TimeoutError(f"service {name} did not answer")
        return fut.result()

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def record_chunks_and_diagnostics(node) -> tuple[list, list]:
    """(chunks, diagnostic messages) policy_node publishes, appended as they arrive (holds,
    the empty chunks, left out)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from tinyvla_grpo_interfaces.msg import ActionChunk

    from tinyvla_grpo_ros.nodes.ros_common import RELIABLE
    chunks, diags = [], []
    node.create_subscription(ActionChunk, "action_chunk",
                             lambda m: chunks.append(m) if m.horizon else None, RELIABLE)
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: diags.extend(s.message for s in m.status), 10)
    return chunks, diags


class SensorFeed:
    """The robot's camera and joint states as a test publishes them: sensor QoS, one stamp."""

    def __init__(self, node, image_size: int = 32, joint_names=None) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState

        from tinyvla_grpo_ros.sim.metaworld_scene import JOINT_NAMES
        self.node, self.size = node, image_size
        self.joint_names = list(joint_names or JOINT_NAMES)
        self.pub_img = node.create_publisher(Image, "image_raw", qos_profile_sensor_data)
        self.pub_js = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.rng = np.random.default_rng(0)

    def publish(self, image=None) -> None:
        """Joint states (all zero) and an image (random unless given), stamped now."""
        from builtin_interfaces.msg import Time
        from sensor_msgs.msg import JointState

        from tinyvla_grpo_ros.nodes.ros_common import numpy_to_image
        now = self.node.get_clock().now().nanoseconds
        stamp = Time(sec=now // 10**9, nanosec=now % 10**9)
        js = JointState(name=self.joint_names, position=[0.0] * len(self.joint_names))
        js.header.stamp = stamp
        self.pub_js.publish(js)
        if image is None:
            image = self.rng.integers(0, 255, (self.size, self.size, 3), dtype=np.uint8)
        img = numpy_to_image(image, None)
        img.header.stamp = stamp
        self.pub_img.publish(img)


def launch_policy_node(tmp_path: Path, executed_steps: int = 4, checkpoint: Path | None = None,
                       **params):
    """policy_node alone (sim_loop.yaml) on a fresh tiny checkpoint (or `checkpoint`), its log
    in tmp_path; returns (launch, checkpoint). params override the node's parameters (as
    strings)."""
    import torch

    from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
    from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
    from tinyvla_grpo_ros.core.model import TinyVLAPolicy
    from tinyvla_grpo_ros.launcher import Launch
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = checkpoint or save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg),
                                         SamplerConfig(executed_steps=executed_steps))
    return Launch(ROOT / "config" / "sim_loop.yaml", {"policy_node": {
        "checkpoint": str(ckpt), "adapter_root": str(tmp_path / "adapters"),
        "trainable_preset": "adapters", "executed_steps": str(executed_steps)} | params},
        only=["policy_node"], log_dir=tmp_path), ckpt


def chunks_from_policy_node(tmp_path: Path, checkpoint: Path, executed_steps: int,
                            image_size: int, n: int = 2) -> list:
    """policy_node on `checkpoint` (an imported one, say) over DDS, an episode running and a
    camera feed of `image_size` px: its first n sampled ActionChunks (holds left out)."""
    from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState

    from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE
    launch, _ = launch_policy_node(tmp_path, executed_steps, checkpoint=checkpoint)
    client = Client("imported")
    chunks = []
    client.node.create_subscription(ActionChunk, "action_chunk",
                                    lambda m: chunks.append(m) if m.horizon else None, RELIABLE)
    feed = SensorFeed(client.node, image_size=image_size)
    pub = client.node.create_publisher(EpisodeState, "episode_state", LATCHED)
    log = tmp_path / "policy_node.log"
    try:
        pub.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id="e1",
                                 task_id="reach-v3"))
        for _ in range(600):
            assert launch.poll() is None, log.read_text()[-2000:]
            feed.publish()
            if client.spin_until(lambda: len(chunks) >= n, 0.1):
                break
        assert len(chunks) >= n, log.read_text()[-2000:]
        return chunks
    finally:
        client.close()
        launch.stop()


def one_group_through_the_nodes(tmp_path: Path, overrides: dict, timeout: float = 240.0):
    """sim_node, policy_node and episode_manager_node (sim_loop.yaml with `overrides`, whose
    episode manager runs one group of 2 into its store_root) until that group is stored:
    (its episodes, the nodes' log tails)."""
    from tinyvla_grpo_ros.core.rollout_store import RolloutStore
    from tinyvla_grpo_ros.launcher import Launch
    ov = {n: {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in d.items()}
          for n, d in overrides.items()}
    launch = Launch(ROOT / "config" / "sim_loop.yaml", ov,
                    only=["sim_node", "policy_node", "episode_manager_node"], log_dir=tmp_path)
    store = RolloutStore(Path(ov["episode_manager_node"]["store_root"]))
    log = lambda: "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("*.log"))  # noqa
    try:
        deadline = time.monotonic() + timeout
        while True:
            groups = store.groups("reach-v3")
            if groups and len(store.episode_ids("reach-v3", groups[0])) == 2:
                return store.read_group("reach-v3", groups[0]), log()
            assert time.monotonic() < deadline and launch.poll() is None, log()
            time.sleep(0.5)
    finally:
        launch.stop()
