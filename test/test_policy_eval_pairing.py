"""policy_node's evaluation episodes are paired: the same scene meets the same x_K at each decision
whatever version runs, so the regression guard and the per-version table compare versions, not
noise draws. Exploration episodes keep fresh noise."""
import time
from pathlib import Path

import numpy as np
import torch
from builtin_interfaces.msg import Time
from rclpy.qos import qos_profile_sensor_data
from ros_harness import Client
from sensor_msgs.msg import Image, JointState
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState

from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.launcher import Launch
from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE, numpy_to_image
from tinyvla_grpo_ros.sim.metaworld_scene import JOINT_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_evaluation_episodes_of_one_scene_start_alike_and_exploration_episodes_do_not(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg), SamplerConfig(executed_steps=4))
    launch = Launch(ROOT / "config" / "sim_loop.yaml", {"policy_node": {
        "checkpoint": str(ckpt), "adapter_root": str(tmp_path / "adapters"),
        "trainable_preset": "adapters"}}, only=["policy_node"], log_dir=tmp_path)
    client = Client("eval_pairing")
    n = client.node
    chunks: list[ActionChunk] = []
    n.create_subscription(ActionChunk, "action_chunk",
                          lambda m: chunks.append(m) if m.episode_id else None, RELIABLE)
    pub_img = n.create_publisher(Image, "image_raw", qos_profile_sensor_data)
    pub_js = n.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    pub_ep = n.create_publisher(EpisodeState, "episode_state", LATCHED)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    def first_chunk(episode_id: str, init_state_id: int, deterministic: bool) -> np.ndarray:
        """Run an episode on the same observation; its first chunk's actions."""
        pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id=episode_id,
                                    task_id="reach-v3", init_state_id=init_state_id,
                                    deterministic=deterministic))
        client.spin_until(lambda: False, 0.3)
        deadline = time.monotonic() + 20
        while True:
            mine = [m for m in chunks if m.episode_id == episode_id and m.chunk_index == 0]
            if mine:
                break
            assert time.monotonic() < deadline and launch.poll() is None, \
                (tmp_path / "policy_node.log").read_text()[-2000:]
            now = n.get_clock().now().nanoseconds
            stamp = Time(sec=now // 10**9, nanosec=now % 10**9)
            js = JointState(name=list(JOINT_NAMES), position=[0.1] * len(JOINT_NAMES))
            js.header.stamp = stamp
            pub_js.publish(js)
            client.spin_until(lambda: False, 0.1)
            msg = numpy_to_image(image, None)
            msg.header.stamp = stamp
            pub_img.publish(msg)
            client.spin_until(lambda: False, 0.3)
        return np.array(mine[0].actions)

    try:
        eval_a = first_chunk("eval-a", 5, True)
        eval_b = first_chunk("eval-b", 5, True)
        other_scene = first_chunk("eval-c", 6, True)
        explore_a = first_chunk("explore-a", 5, False)
        explore_b = first_chunk("explore-b", 5, False)
        np.testing.assert_array_equal(eval_a, eval_b)       # same scene, same x_K
        assert not np.allclose(eval_a, other_scene)         # another scene, another draw
        assert not np.allclose(explore_a, explore_b)        # exploration stays random
    finally:
        client.close()
        launch.stop()
