"""The operator's side of policy_node: takeover requests, teleop commands, operator chunks.

In: `intervene` (std_srvs/SetBool: hold / release; the panel and scripts), `joy`
(sensor_msgs/Joy: `joy_intervene_button` as a dead-man switch, `joy_axes` x `joy_scales` as the
command), `operator_action` (sensor_msgs/JointState: position = the command, by action name, or
in action order when unnamed), `operator_twist` (geometry_msgs/TwistStamped onto ee_dx/dy/dz).
Out: `control` (std_msgs/String, latched: "policy" or "operator"). The state machine and the
mappings are core/takeover.py; this file converts messages and builds the operator's chunks.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from geometry_msgs.msg import TwistStamped
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import String
from std_srvs.srv import SetBool
from tinyvla_grpo_interfaces.msg import ActionChunk

from ..core.takeover import Takeover, TakeoverConfig, joy_action, twist_action
from . import ros_common as rc


class OperatorControl:
    def __init__(self, node, action_names: list[str], limits, episode_running, model,
                 n_exec: int, cameras: list[str], joint_names: list[str]) -> None:
        """limits: the node's ActionLimits; episode_running: () -> bool; model: the policy (its
        horizon; its normalizer maps the operator's actions into its normalized space)."""
        self.node, self.action_names, self.normalizer = node, list(action_names), model.normalizer
        self.limits, self.horizon, self.n_exec = limits, model.config.horizon, n_exec
        self.cameras, self.joint_names = list(cameras), list(joint_names)
        low, high = limits.low, limits.high
        self.cfg = TakeoverConfig(**rc.declare_settings(node, TakeoverConfig))
        self.joy = self.cfg.joy_mapping(len(action_names))      # ValueError: refuse to start
        if self.cfg.twist_scale > 0:
            err = twist_action((0.0, 0.0, 0.0), self.action_names, 1.0)
            if isinstance(err, str):
                raise ValueError(f"twist_scale > 0 but {err}")
        self.takeover = Takeover(low, high, self.cfg.operator_stale_s)
        self.episode_running = episode_running
        self.problem = ""                     # the latest refused input, for /diagnostics
        self.stats = {"operator_chunks": 0, "operator_refused": 0, "operator_holds": 0}
        self.holding = False                  # a stale / missing command already held the arm
        self.joy_down = False
        node.create_service(SetBool, "intervene", self.on_intervene)
        node.create_subscription(JointState, "operator_action", self.on_action, rc.RELIABLE)
        node.create_subscription(Joy, "joy", self.on_joy, 10)
        node.create_subscription(TwistStamped, "operator_twist", self.on_twist, 10)
        self.pub_control = node.create_publisher(String, "control", rc.LATCHED)
        self.publish_control()

    @property
    def active(self) -> bool:
        return self.takeover.active

    # ----- requests -----
    def request(self, on: bool, source: str) -> tuple[bool, str]:
        was = self.takeover.active
        ok, msg = self.takeover.request(on, self.episode_running())
        if not ok:
            self.refuse(f"takeover by {source} {msg}")
        elif was != self.takeover.active:
            self.node.get_logger().info(f"{source}: {msg}")
            self.holding = False
            self.publish_control()
        return ok, msg

    def on_intervene(self, req: SetBool.Request, resp: SetBool.Response):
        resp.success, resp.message = self.request(bool(req.data), "intervene service")
        return resp

    def end_episode(self) -> None:
        was = self.takeover.active
        self.takeover.end_episode()
        self.holding = False
        if was:
            self.publish_control()

    def publish_control(self) -> None:
        self.pub_control.publish(String(data="operator" if self.takeover.active else "policy"))

    # ----- commands -----
    def take(self, action, source: str) -> None:
        if isinstance(action, str):
            self.refuse(f"{source}: {action}")
            return
        err = self.takeover.command(action, time.monotonic())
        if err:
            self.refuse(f"{source}: {err}")
        else:
            self.problem = ""

    def refuse(self, text: str) -> None:
        self.stats["operator_refused"] += 1
        if text != self.problem:
            self.node.get_logger().warning(text)
        self.problem = text

    def on_action(self, msg: JointState) -> None:
        if not msg.name:
            return self.take(list(msg.position), "operator_action")
        if len(msg.name) != len(msg.position):
            return self.take(f"{len(msg.name)} names but {len(msg.position)} positions",
                             "operator_action")
        missing = [n for n in self.action_names if n not in msg.name]
        if missing:
            return self.take(f"no value for action {missing}", "operator_action")
        self.take([msg.position[list(msg.name).index(n)] for n in self.action_names],
                  "operator_action")

    def on_joy(self, msg: Joy) -> None:
        b = self.cfg.joy_intervene_button
        if b >= 0:
            down = b < len(msg.buttons) and bool(msg.buttons[b])
            if down != self.joy_down:
                self.joy_down = down
                self.request(down, "joy")
        if self.joy is not None and self.takeover.active:
            self.take(joy_action(list(msg.axes), *self.joy), "joy")

    def on_twist(self, msg: TwistStamped) -> None:
        if self.cfg.twist_scale <= 0:
            return
        v = msg.twist.linear
        self.take(twist_action((v.x, v.y, v.z), self.action_names, self.cfg.twist_scale),
                  "operator_twist")

    # ----- the operator's chunk -----
    def decide(self, obs, episode, chunk_index: int, prev, send_hold, instruction: str):
        """A decision under takeover: (ActionChunk, actions) to send, or why the arm holds."""
        actions = self.chunk(prev, send_hold)
        if isinstance(actions, str):
            return actions
        return self.message(actions, self.n_exec, episode, chunk_index, obs, self.cameras,
                            self.joint_names, instruction), actions

    def chunk(self, prev, send_hold) -> np.ndarray | str:
        """The operator's command held for n_exec control steps, through the node's limits
        (rate limit from `prev`), padded to the policy's horizon; or why the arm holds (then
        `send_hold(why)`, once until a command comes)."""
        cmd = self.takeover.current(time.monotonic())
        if isinstance(cmd, str):
            if not self.holding:
                self.holding = True
                self.stats["operator_holds"] += 1
                send_hold(cmd)
            return cmd
        self.holding = False
        actions = self.limits.apply(np.repeat(cmd[None].astype(np.float64), self.horizon, 0),
                                    prev)
        actions[self.n_exec:] = actions[self.n_exec - 1]
        self.stats["operator_chunks"] += 1
        return actions

    def message(self, actions: np.ndarray, n_exec: int, episode, chunk_index: int, obs,
                cameras: list[str], joint_names: list[str], instruction: str) -> ActionChunk:
        """An operator chunk: what the arm executes and what the correction loss imitates."""
        _, state, oldest, used, _ = obs
        with torch.no_grad():
            a = torch.as_tensor(actions, dtype=torch.float32).to(self.normalizer.action_min)
            norm = self.normalizer.normalize_action(a).clamp(-1, 1).cpu()
        return ActionChunk(
            episode_id=episode.episode_id, chunk_index=chunk_index, task_id=episode.task_id,
            action_names=self.action_names, horizon=actions.shape[0],
            action_dim=actions.shape[1], actions=actions.astype(np.float32).ravel().tolist(),
            executed_steps=n_exec, operator_steps=n_exec,
            normalized_actions=norm.numpy().ravel().tolist(), observation_stamp=oldest.to_msg(),
            images=used, camera_names=cameras, joint_names=joint_names,
            joint_positions=state.tolist(), instruction=instruction)
