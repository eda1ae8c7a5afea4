"""Chunk pipelining over DDS, joint_trajectory mode: with a lead, each trajectory is computed
before the previous one ends and stamped to start when it ends, so consecutive trajectories
start exactly one period apart and the controller receives each before it is due."""
import time

import numpy as np
from rclpy.time import Time
from ros_harness import Client, SensorFeed, launch_policy_node
from tinyvla_grpo_interfaces.msg import EpisodeState
from trajectory_msgs.msg import JointTrajectory

from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE
from tinyvla_grpo_ros.sim.metaworld_scene import JOINT_NAMES

CONTROLLER = "/joint_trajectory_controller/joint_trajectory"
PERIOD, LEAD = 0.2, 0.15          # 4 actions at 20 Hz; generous lead for a loaded CI machine


def test_pipelined_trajectories_start_back_to_back_and_arrive_before_they_are_due(tmp_path):
    launch, _ = launch_policy_node(
        tmp_path, 4, command_mode="joint_trajectory", joint_names=str(list(JOINT_NAMES)),
        action_names=str(list(JOINT_NAMES[:4])), control_rate_hz="20.0",
        decision_period_s="-1.0", pipeline_lead_s=str(LEAD), watchdog_s="2.0")
    client = Client("pipelining")
    n = client.node
    got = []                          # (start stamp s, received s) of each trajectory
    n.create_subscription(JointTrajectory, CONTROLLER, lambda m: got.append(
        (Time.from_msg(m.header.stamp).nanoseconds * 1e-9,
         n.get_clock().now().nanoseconds * 1e-9)) if m.points and len(m.points) > 1 else None,
        RELIABLE)
    feed = SensorFeed(n)
    pub_ep = n.create_publisher(EpisodeState, "episode_state", LATCHED)
    try:
        pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, task_id="reach-v3",
                                    episode_id="pipe-1"))
        end = time.monotonic() + 30
        while time.monotonic() < end and len(got) < 12:
            feed.publish()
            client.spin_until(lambda: False, 1 / 30)
        assert len(got) >= 12, (got, (tmp_path / "policy_node.log").read_text()[-2000:])
        starts = np.array([s for s, _ in got])
        gaps = np.diff(starts)
        on_time = [r <= s + 0.005 for s, r in got]
        # back to back: a whole period between starts whenever the decision was on time
        assert np.mean(np.isclose(gaps, PERIOD, atol=0.002)) >= 0.7, gaps
        assert np.all(gaps >= PERIOD - 0.002), gaps          # never overlapping a chunk
        assert np.mean(on_time) >= 0.7, got
    finally:
        client.close()
        launch.stop()
