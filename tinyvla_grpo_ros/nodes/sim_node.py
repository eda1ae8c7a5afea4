"""sim_node: a Meta-World (MuJoCo) scene on the robot's topics.

Publishes   image_raw (sensor_msgs/Image rgb8, sensor-data QoS) and camera_info at decision points
            (after a reset and whenever the queued actions run out), at `idle_image_hz` otherwise,
            and with `camera_hz` > 0 also at that rate throughout, as a streaming camera;
            joint_states (names + positions) every control step; success and done (std_msgs/Bool,
            latched; done = success or out of steps, the episode's end as the simulator sees it);
            /clock (rosgraph_msgs/Clock) when `publish_clock` is true.
Executes    the executed prefix of each ActionChunk on `action_chunk` (actions named ee_dx, ee_dy,
            ee_dz, gripper: Meta-World's end-effector deltas), or one action per Float64MultiArray
            on `command`, one action per control step (dt = 12.5 ms).
Serves      reset_scene (ResetScene.srv): the same init_state_id gives the same scene;
            scripted_expert (std_srvs/SetBool): Meta-World's scripted expert drives the arm until
            the episode ends (for demonstrations and checks).
Operator    with `simulated_operator`, Meta-World's scripted expert corrects the exploring
            episodes through policy_node's intervene and operator_action (sim_operator.py;
            thresholds: core/corrections.OperatorConfig).
`pace`: "wall" steps at the control rate in wall time; "fast" steps as fast as it can (use with
publish_clock and use_sim_time on the other nodes).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque

import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import SetBool
from tinyvla_grpo_interfaces.msg import ActionChunk
from tinyvla_grpo_interfaces.srv import ResetScene

from ..core.corrections import OperatorConfig
from ..sim.metaworld_scene import ACTION_NAMES, JOINT_NAMES, MetaWorldScene, expert_policy
from .ros_common import LATCHED, RELIABLE, declare, declare_settings, numpy_to_image, run
from .sim_operator import SimOperatorBridge


class SimNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sim_node", **kwargs)
        task = declare(self, "task", "reach-v3", "Meta-World task (e.g. reach-v3)")
        size = declare(self, "image_size", 64, "camera image width = height (px)", 16, 1024)
        camera = declare(self, "camera_name", "corner2", "Meta-World camera")
        marker = declare(self, "goal_marker_radius", 0.0,
                         "goal drawn as a sphere of this radius, m (0 = Meta-World's)", 0.0, 0.2)
        quality = declare(self, "render_quality", "fast",
                          "fast (no shadows, no multisampling: ~7x cheaper) or full; must match "
                          "the images the policy was trained on")
        self.max_steps = declare(self, "max_steps", 150, "control steps before timeout", 1, 100000)
        self.pace = declare(self, "pace", "wall", "wall (real time) or fast (as fast as it can)")
        self.publish_clock = declare(self, "publish_clock", False, "publish /clock (sim time)")
        idle_hz = declare(self, "idle_image_hz", 2.0, "image rate while no actions run", 0.0, 60.0)
        camera_hz = declare(self, "camera_hz", 0.0, "a streaming camera: frames at this rate, "
                            "whatever runs (with pace wall; for a policy with observation history "
                            "and decisions on a clock). 0: frames at decision points", 0.0, 200.0)
        simulated_operator = declare(self, "simulated_operator", False, "a simulated operator "
                                     "(the scripted expert) corrects exploring episodes")
        operator_cfg = OperatorConfig(**declare_settings(self, OperatorConfig))
        if self.pace not in ("wall", "fast"):
            raise ValueError(f"pace must be 'wall' or 'fast', got {self.pace!r}")
        self.scene = MetaWorldScene(task, image_size=size, camera=camera, max_steps=self.max_steps,
                                    goal_marker_radius=marker, render_quality=quality)
        self.lock = threading.Lock()
        self.queue: deque[np.ndarray] = deque()
        self.queue_operator = False          # the queued actions are the operator's
        self.sim_time = 0.0
        self.pub_image = self.create_publisher(Image, "image_raw", qos_profile_sensor_data)
        self.pub_info = self.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
        self.pub_joints = self.create_publisher(JointState, "joint_states",
                                                qos_profile_sensor_data)
        self.pub_success = self.create_publisher(Bool, "success", LATCHED)
        self.pub_done = self.create_publisher(Bool, "done", LATCHED)
        self.pub_clock = self.create_publisher(Clock, "/clock", 10) if self.publish_clock else None
        self.create_subscription(ActionChunk, "action_chunk", self.on_chunk, RELIABLE)
        self.create_subscription(Float64MultiArray, "command", self.on_command, RELIABLE)
        self.create_service(ResetScene, "reset_scene", self.on_reset)
        self.create_service(SetBool, "scripted_expert", self.on_expert)
        self.expert = None
        self.operator = SimOperatorBridge(self, task, operator_cfg, self.publish_observation_now) \
            if simulated_operator else None
        period = self.scene.dt if self.pace == "wall" else 0.0005
        self.create_timer(period, self.tick)
        self.idle_period, self.last_image = 1.0 / idle_hz if idle_hz > 0 else 0.0, 0.0
        if idle_hz > 0:
            self.create_timer(self.idle_period, self.idle_image)
        if camera_hz > 0:
            if self.pace != "wall":
                raise ValueError("camera_hz needs pace wall: a streaming camera's frames are "
                                 "stamped as they are taken")
            self.create_timer(1.0 / camera_hz, self.stream_image)
        with self.lock:
            self.scene.reset(0)
            self.publish_observation()
        self.get_logger().info(f"sim ready: {task}, {size}px camera {camera}, pace {self.pace}")

    # ----- commands -----
    def on_chunk(self, msg: ActionChunk) -> None:
        if tuple(msg.action_names) != ACTION_NAMES:
            self.get_logger().warning(f"ignoring chunk with actions {list(msg.action_names)}; "
                                      f"this sim executes {list(ACTION_NAMES)}")
            return
        acts = np.asarray(msg.actions, np.float64).reshape(msg.horizon, msg.action_dim)
        with self.lock:
            self.queue.clear()
            self.queue.extend(acts[: msg.executed_steps])
            self.queue_operator = bool(msg.operator_steps)

    def on_command(self, msg: Float64MultiArray) -> None:
        a = np.asarray(msg.data, np.float64)
        if a.shape != (len(ACTION_NAMES),) or not np.all(np.isfinite(a)):
            self.get_logger().warning(f"ignoring command {list(a)}: need 4 finite numbers "
                                      f"{list(ACTION_NAMES)}")
            return
        with self.lock:
            self.queue.append(a)

    def on_reset(self, req: ResetScene.Request, resp: ResetScene.Response):
        if req.task_id and req.task_id != self.scene.task:
            resp.success = False
            resp.message = f"this sim runs {self.scene.task}, not {req.task_id}"
            return resp
        with self.lock:
            self.queue.clear()
            self.scene.reset(int(req.init_state_id))
            self.publish_observation()
        resp.success, resp.message = True, f"scene reset to init state {req.init_state_id}"
        return resp

    def on_expert(self, req: SetBool.Request, resp: SetBool.Response):
        with self.lock:
            self.queue.clear()
            self.expert = expert_policy(self.scene.task) if req.data else None
        resp.success, resp.message = True, f"scripted expert {'on' if req.data else 'off'}"
        return resp

    # ----- stepping -----
    def tick(self) -> None:
        with self.lock:
            if self.expert is not None and not self.queue:
                self.queue.append(self.scene.expert_action(self.expert))
            if not self.queue:
                return
            if self.scene.success or self.scene.steps >= self.max_steps:
                self.queue.clear()
                return
            if self.expert is None and self.operator is not None:
                self.operator.step(self.scene, self.queue[0], self.queue_operator)
            res = self.scene.step(self.queue.popleft())
            self.sim_time += self.scene.dt
            if self.pub_clock is not None:
                sec = math.floor(self.sim_time)
                self.pub_clock.publish(Clock(clock=self._time(sec, self.sim_time - sec)))
            self.publish_joints()
            if res.success and not self._last_success:
                self.publish_success(True)
            if res.done:
                self.expert = None
                self.pub_done.publish(Bool(data=True))
            if not self.queue or res.done:
                self.queue.clear()
                if self.operator is None or not self.operator.pending:
                    self.publish_image()        # decision point (or end of episode)

    def stream_image(self) -> None:
        """A streaming robot: a frame, and the joint states (every step as well while it runs)."""
        with self.lock:
            self.publish_joints()
            self.publish_image()

    def idle_image(self) -> None:
        """A frame while no actions run, once a whole idle period has passed without one: a
        decision point's frame whose chunk is still on its way is not followed by another."""
        with self.lock:
            if not self.queue and (self.operator is None or not self.operator.pending) and \
                    time.monotonic() - self.last_image >= self.idle_period:
                self.publish_image()
                self.publish_joints()

    # ----- publishing (caller holds the lock) -----
    def _time(self, sec: int, frac: float):
        from builtin_interfaces.msg import Time
        return Time(sec=int(sec), nanosec=int(frac * 1e9))

    def stamp(self):
        return self.get_clock().now().to_msg()

    def publish_observation_now(self) -> None:
        """A decision point outside stepping (caller holds the lock)."""
        self.publish_joints()
        self.publish_image()

    def publish_observation(self) -> None:
        self.publish_success(self.scene.success)
        self.pub_done.publish(Bool(data=False))
        self.publish_joints()
        self.publish_image()

    def publish_success(self, value: bool) -> None:
        self._last_success = value
        self.pub_success.publish(Bool(data=value))

    def publish_joints(self) -> None:
        msg = JointState(name=list(JOINT_NAMES), position=self.scene.joint_positions().tolist())
        msg.header.stamp = self.stamp()
        self.pub_joints.publish(msg)

    def publish_image(self) -> None:
        self.last_image = time.monotonic()
        stamp = self.stamp()
        img = numpy_to_image(self.scene.render(), stamp, "sim_camera")
        self.pub_image.publish(img)
        fovy = math.radians(float(self.scene.env.model.cam_fovy[
            self.scene.env.model.camera(self.scene.camera).id]))
        f = 0.5 * img.height / math.tan(fovy / 2)
        info = CameraInfo(width=img.width, height=img.height, distortion_model="plumb_bob",
                          d=[0.0] * 5, k=[f, 0.0, img.width / 2, 0.0, f, img.height / 2,
                                          0.0, 0.0, 1.0])
        info.header = img.header
        self.pub_info.publish(info)

    def close(self) -> None:
        self.scene.close()


def main() -> None:
    run(SimNode, threads=1)      # the EGL context is current in the main thread only


if __name__ == "__main__":
    main()
