"""A real arm's faults over DDS, joint_trajectory mode: what reaches the controller is always
finite, inside the limits and never a jump beyond max_delta_per_step, and a bad input stops
commands with a diagnostic naming it.

The test is the arm: a camera (640x480), an arm driver and a gripper driver publishing
joint_states separately, an episode manager and the controller's command topic."""
import time

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.qos import qos_profile_sensor_data
from ros_harness import Client, launch_policy_node, record_chunks_and_diagnostics
from sensor_msgs.msg import Image, JointState
from tinyvla_grpo_interfaces.msg import EpisodeState
from trajectory_msgs.msg import JointTrajectory

from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE, numpy_to_image

ARM, GRIPPER = [f"j{i}" for i in range(7)], ["g0", "g1"]
ACTIONS, LIMIT, MAX_DELTA = ["j0", "j1", "j2", "j3"], 0.5, 0.05
CONTROLLER = "/joint_trajectory_controller/joint_trajectory"


def test_faults_of_a_real_arm_never_reach_the_controller(tmp_path):
    launch, _ = launch_policy_node(
        tmp_path, 4, command_mode="joint_trajectory", joint_names=str(ARM + GRIPPER),
        action_names=str(ACTIONS), action_low=str([-LIMIT] * 4), action_high=str([LIMIT] * 4),
        max_delta_per_step=str(MAX_DELTA), control_rate_hz="20.0", watchdog_s="0.6",
        stale_after_s="1.0", future_tolerance_s="0.5", decision_period_s="0.0")
    client = Client("arm")
    n = client.node
    trajs = []                                   # every trajectory sent to the controller
    n.create_subscription(JointTrajectory, CONTROLLER, lambda m: trajs.append(
        np.array([p.positions for p in m.points])), RELIABLE)
    chunks, diags = record_chunks_and_diagnostics(n)
    pub_img = n.create_publisher(Image, "image_raw", qos_profile_sensor_data)
    pub_js = n.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    pub_ep = n.create_publisher(EpisodeState, "episode_state", LATCHED)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    log = lambda: (tmp_path / "policy_node.log").read_text()[-3000:]  # noqa: E731

    def stamp(offset_s=0.0):
        t = n.get_clock().now().nanoseconds + int(offset_s * 1e9)
        return Time(sec=t // 10**9, nanosec=t % 10**9)

    def send(arm=None, gripper=True, arm_offset=0.0, image=True):
        if arm is not False:
            js = JointState(name=ARM, position=list(arm if arm is not None else [0.0] * 7))
            js.header.stamp = stamp(arm_offset)
            pub_js.publish(js)
        if gripper:
            g = JointState(name=GRIPPER, position=[0.01, 0.01])
            g.header.stamp = stamp()
            pub_js.publish(g)
        client.spin_until(lambda: False, 0.05)
        if image:
            img = numpy_to_image(frame, stamp())
            pub_img.publish(img)
        client.spin_until(lambda: False, 0.1)

    def until(pred, seconds, **kw):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert launch.poll() is None, log()
            send(**kw)
            if pred():
                return True
        return False

    def refused(words, **kw):
        """Commands stop (holds only) and a diagnostic names the problem."""
        assert until(lambda: any(words in d for d in diags[-5:]), 20, **kw), \
            f"no diagnostic naming {words!r}: {diags[-3:]}\n{log()}"
        k = len(chunks)                 # a decision on the input before has landed by now
        until(lambda: False, 1.5, **kw)
        assert len(chunks) == k, f"a command went out with {words!r}"

    try:
        pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id="ep-1",
                                    task_id="reach-v3"))
        # 1. two joint_states publishers merged by name; 640x480 frames fitted to the model
        assert until(lambda: len(chunks) >= 3, 60), f"no commands\n{log()}"
        c = chunks[-1]
        assert (c.images[0].width, c.images[0].height) == (32, 32)   # the model's input
        assert list(c.joint_positions[-2:]) == [0.01, 0.01]           # the gripper's driver
        # 2.-5. bad readings, clocks and drivers: commands stop, each named
        refused("non-finite", arm=[np.nan] + [0.0] * 6)
        refused("j0 reads 1e+06 outside", arm=[1e6] + [0.0] * 6)
        refused("in the future", arm_offset=3600.0)
        refused("nothing new on joint j0", arm=False)       # the arm's driver died
        # 6. an episode for a task this policy does not serve
        pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id="ep-2",
                                    task_id="pick-cube"))
        refused("task 'pick-cube', which this policy does not serve")
        # everything the controller got: finite and inside the limits; a command starts
        # within max_delta of the arm's reading (this test's arm reads 0) and moves at most
        # max_delta per step; a hold stays at the last command: no jump at all
        last = np.zeros(4)
        holds = 0
        for t in trajs:
            assert np.all(np.isfinite(t)) and np.all(np.abs(t) <= LIMIT + 1e-9), t
            if len(t) == 1:
                assert np.allclose(t[0], last), (t[0], last)      # the hold
                holds += 1
                continue
            steps = np.diff(np.vstack([np.zeros(4), t]), axis=0)
            assert np.all(np.abs(steps) <= MAX_DELTA + 1e-6), steps
            last = t[-1]
        assert holds >= 2, "no holds were sent"
    finally:
        client.close()
        launch.stop()
