"""policy_node answers bad input with no command, a diagnostic naming the problem, and recovers."""
import time

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.qos import qos_profile_sensor_data
from ros_harness import Client, launch_policy_node
from sensor_msgs.msg import Image, JointState
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState

from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE, numpy_to_image
from tinyvla_grpo_ros.sim.metaworld_scene import JOINT_NAMES


def test_bad_inputs_give_no_command_and_a_named_diagnostic_then_recovery(tmp_path):
    launch, _ = launch_policy_node(tmp_path, stale_after_s="1.0")
    client = Client("bad_input")
    n = client.node
    chunks, diags = [], []
    n.create_subscription(ActionChunk, "action_chunk",
                          lambda m: chunks.append(m) if m.episode_id else None, RELIABLE)
    n.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(m.status), 10)
    pub_img = n.create_publisher(Image, "image_raw", qos_profile_sensor_data)
    pub_js = n.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    pub_ep = n.create_publisher(EpisodeState, "episode_state", LATCHED)
    pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id="ep-bad",
                                task_id="reach-v3"))
    good = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    def send(img=None, names=JOINT_NAMES, pos=None, age_s=0.0):
        now = n.get_clock().now().nanoseconds - int(age_s * 1e9)
        stamp = Time(sec=now // 10**9, nanosec=now % 10**9)
        js = JointState(name=list(names), position=list(pos if pos is not None else
                                                        np.arange(len(names), dtype=float)))
        js.header.stamp = stamp
        pub_js.publish(js)
        # Topics are not ordered with each other: let the joints land before the image that
        # triggers the decision, or the node rightly decides with the previous (valid) joints.
        client.spin_until(lambda: False, 0.1)
        msg = img if img is not None else numpy_to_image(good, None)
        msg.header.stamp = stamp
        pub_img.publish(msg)

    def expect_chunk(**kw) -> ActionChunk:
        k = len(chunks)
        deadline = time.monotonic() + 20
        while len(chunks) == k:
            assert time.monotonic() < deadline and launch.poll() is None, \
                (tmp_path / "policy_node.log").read_text()[-2000:]
            send(**kw)
            client.spin_until(lambda: len(chunks) > k, 0.3)
        return chunks[-1]

    def expect_refusal(words: str, **kw) -> None:
        client.spin_until(lambda: False, 1.0)     # decisions on earlier good input land first
        k = len(chunks)
        diags.clear()
        for _ in range(6):
            send(**kw)
            client.spin_until(lambda: False, 0.2)
        ok = client.spin_until(lambda: any(d.level == DiagnosticStatus.WARN and words in d.message
                                           for d in diags), 5)
        assert len(chunks) == k, f"a command was sent for bad input ({words})"
        assert ok, f"no diagnostic naming {words!r}: {[d.message for d in diags][-3:]}"

    try:
        # joints are merged by name across publishers: one never published is missing (sent
        # until DDS has connected the test and the node, and the node says so)
        deadline = time.monotonic() + 30
        while not any("lacks" in d.message for d in diags):
            assert time.monotonic() < deadline, [d.message for d in diags][-3:]
            send(names=JOINT_NAMES[:-1], pos=np.zeros(8))
            client.spin_until(lambda: False, 0.2)
        assert not chunks, "a command was sent without the model's last joint"
        expect_chunk()                                               # good input works
        mono = numpy_to_image(good, None)
        mono.encoding = "mono8"
        expect_refusal("unsupported encoding", img=mono)
        short = numpy_to_image(good, None)
        short.data = bytes(short.data)[:-7]
        expect_refusal("does not match", img=short)
        expect_refusal("empty image", img=Image(encoding="rgb8", height=0, width=0, step=0))
        pos = np.zeros(9)
        pos[2] = np.nan
        expect_refusal("non-finite joint", pos=pos)
        expect_refusal("non-finite joint", pos=np.array([0.0] * 8 + [np.inf]))
        expect_refusal("stale", age_s=5.0)
        # recovery, with joint names in another order: the chunk carries the model's order
        rev = list(reversed(JOINT_NAMES))
        chunk = expect_chunk(names=rev, pos=np.arange(9, dtype=float)[::-1])
        assert list(chunk.joint_names) == list(JOINT_NAMES)
        assert list(chunk.joint_positions) == [float(i) for i in range(9)]
    finally:
        client.close()
        launch.stop()
