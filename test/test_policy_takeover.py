"""The operator's takeover of policy_node over DDS: intervene service, operator_action, Joy
dead-man switch and axes, TwistStamped; refusals, holds and hand-back.

A real policy_node process (tiny random model, chunk mode, actions ee_dx, ee_dy, ee_dz, gripper
limited to +-0.5) runs; the test is its camera, its episode manager and its operator, and
listens to the ActionChunk stream (a hold is an empty chunk), `control` and /diagnostics.
"""
import math
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from ros_harness import Client, SensorFeed, launch_policy_node
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import String
from std_srvs.srv import SetBool
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState

from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE

LIMIT = 0.5
WAIT_S = 60.0          # only a failure waits this long (a loaded 2-core CI machine stalls)


def test_takeover_forwards_the_operators_commands_within_limits_and_hands_back(tmp_path):
    launch, _ = launch_policy_node(
        tmp_path, 4, action_low=str([-LIMIT] * 4), action_high=str([LIMIT] * 4),
        operator_stale_s="0.5", joy_intervene_button="2", joy_axes="[1, 0, -1, -1]",
        joy_scales="[0.5]", twist_scale="2.0", watchdog_s="0.0")
    client = Client("takeover")
    n = client.node
    chunks, diags, control = [], [], []
    n.create_subscription(ActionChunk, "action_chunk", chunks.append, RELIABLE)
    n.create_subscription(DiagnosticArray, "/diagnostics",
                          lambda m: diags.extend(s.message for s in m.status), 10)
    n.create_subscription(String, "control", lambda m: control.append(m.data), LATCHED)
    feed = SensorFeed(n)
    pub_ep = n.create_publisher(EpisodeState, "episode_state", LATCHED)
    pub_op = n.create_publisher(JointState, "operator_action", RELIABLE)
    pub_joy = n.create_publisher(Joy, "joy", 10)
    pub_twist = n.create_publisher(TwistStamped, "operator_twist", 10)
    log = lambda: (tmp_path / "policy_node.log").read_text()[-3000:]  # noqa: E731
    command = [None]          # what the operator streams with the camera (a callable)

    def stream(until, seconds: float = WAIT_S) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert launch.poll() is None, log()
            feed.publish()
            if command[0] is not None:
                command[0]()
            if client.spin_until(until, 0.05):
                return True
        return False

    def intervene(on: bool) -> SetBool.Response:
        return client.call(SetBool, "intervene", SetBool.Request(data=on))

    def after(k: int, pred) -> list[ActionChunk]:
        return [c for c in chunks[k:] if pred(c)]

    def action_of(c: ActionChunk) -> np.ndarray:
        return np.asarray(c.actions).reshape(c.horizon, c.action_dim)

    def named(values, names=("gripper", "ee_dz", "ee_dy", "ee_dx")):
        return lambda: pub_op.publish(JointState(name=list(names), position=list(values)))

    try:
        assert stream(lambda: control == ["policy"]), log()
        # 1. no episode: a takeover is refused, nothing moves
        r = intervene(True)
        assert not r.success and "no episode runs" in r.message
        pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id="ep-1",
                                    task_id="reach-v3"))
        assert stream(lambda: len(chunks) >= 2), log()
        assert all(c.operator_steps == 0 and len(c.log_probs) for c in chunks)
        # 2. take over: no command yet -> a hold, and /diagnostics says why
        assert intervene(True).success
        k = len(chunks)
        assert stream(lambda: control[-1] == "operator" and after(k, lambda c: not c.horizon)
                      and any("no command received" in d for d in diags)), log()
        # 3. commands by action name (any order) drive the arm, clamped to the limits
        command[0] = named([0.9, 0.3, -0.2, 0.1])     # gripper 0.9 > 0.5: refused by name
        assert stream(lambda: any("lies outside" in d for d in diags)), log()
        k = len(chunks)
        command[0] = named([0.4, 0.3, -0.2, 0.1])
        assert stream(lambda: len(after(k, lambda c: c.operator_steps)) >= 2), log()
        for c in after(k, lambda c: c.operator_steps)[-2:]:
            assert c.executed_steps == c.operator_steps == 4 and not c.log_probs
            assert np.allclose(action_of(c), [0.1, -0.2, 0.3, 0.4], atol=1e-6)
            norm = np.asarray(c.normalized_actions).reshape(c.horizon, c.action_dim)
            assert np.all(np.isfinite(norm)) and np.all(np.abs(norm) <= 1.0)
            assert c.episode_id == "ep-1" and len(c.images) == 1 and c.joint_positions
        # 4. NaN commands are refused and move nothing; the operator's silence holds the arm
        k = len(chunks)
        command[0] = lambda: pub_op.publish(JointState(position=[math.nan, 0.0, 0.0, 0.0]))
        assert stream(lambda: after(k, lambda c: not c.horizon)
                      and any("not finite" in d for d in diags)), log()
        assert all(np.all(np.isfinite(action_of(c))) for c in after(k, lambda c: c.horizon))
        # 5. a twist drives the end-effector deltas (velocity x twist_scale)
        k = len(chunks)
        twist = TwistStamped()
        twist.twist.linear.x, twist.twist.linear.z = 0.1, -0.05
        command[0] = lambda: pub_twist.publish(twist)
        assert stream(lambda: len(after(k, lambda c: c.operator_steps)) >= 2), log()
        assert np.allclose(action_of(after(k, lambda c: c.operator_steps)[-1]),
                           [0.2, 0.0, -0.1, 0.0], atol=1e-6)
        # 6. disabled: nothing moves, whoever commands
        assert client.call(SetBool, "enable", SetBool.Request(data=False)).success
        k = len(chunks)
        stream(lambda: False, 1.5)
        assert not after(k, lambda c: c.horizon)
        assert client.call(SetBool, "enable", SetBool.Request(data=True)).success
        # 7. release: the policy decides next
        command[0] = None
        assert intervene(False).success
        k = len(chunks)
        assert stream(lambda: control[-1] == "policy" and
                      len(after(k, lambda c: c.horizon and not c.operator_steps)) >= 2), log()
        assert not after(k + 1, lambda c: c.operator_steps)
        # 8. the Joy dead-man switch (button 2) takes over; its axes command (scale 0.5)
        k = len(chunks)
        command[0] = lambda: pub_joy.publish(Joy(axes=[0.4, -0.6], buttons=[0, 0, 1]))
        assert stream(lambda: control[-1] == "operator" and
                      len(after(k, lambda c: c.operator_steps)) >= 2), log()
        assert np.allclose(action_of(after(k, lambda c: c.operator_steps)[-1]),
                           [-0.3, 0.2, 0.0, 0.0], atol=1e-6)
        command[0] = lambda: pub_joy.publish(Joy(axes=[0.4, -0.6], buttons=[0, 0, 0]))
        assert stream(lambda: control[-1] == "policy"), log()
        # 9. the episode ends: control returns to the policy; a takeover is refused again
        command[0] = None
        pub_ep.publish(EpisodeState(state=EpisodeState.IDLE, episode_id="ep-1"))
        assert stream(lambda: control[-1] == "policy", 10.0), log()
        r = intervene(True)
        for _ in range(20):            # the node may not have seen the episode end yet
            if not r.success:
                break
            stream(lambda: False, 0.5)
            r = intervene(True)
        assert not r.success and "no episode runs" in r.message
        assert launch.poll() is None
    finally:
        client.close()
        launch.stop()
