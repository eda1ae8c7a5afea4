"""episode_manager_node: the ROS shell of core/episode_machine.py (groups, outcomes, storage).

Subscribes  action_chunk, active_adapter, success (the simulator's), adapter_update, joy, image,
            control (policy_node's: who moves the arm).
Publishes   episode_state (latched), episode_outcome, group_ready, /diagnostics.
Serves      mark_outcome, scene_ready, start, pause_learning, evaluate_now, rollback_adapter
            (-> learner_node's restore_adapter, else policy_node's select_adapter). The web
            panel and a gamepad (Joy, hold-to-confirm) call the same machine methods; the
            panel's hold-to-intervene calls policy_node's intervene.
Settings: core/episode_machine.EpisodeManagerConfig, plus the store, panel and Joy parameters.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, Joy
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger
from tinyvla_grpo_interfaces.msg import (
    ActionChunk,
    AdapterUpdate,
    EpisodeOutcome,
    EpisodeState,
    GroupReady,
)
from tinyvla_grpo_interfaces.srv import MarkOutcome, ResetScene, SelectAdapter, StartEpisode

from ..core import episode_machine as em
from ..core.inputs import thumbnail_jpeg
from ..core.operator_input import JoyMarker
from ..core.rollout_store import RolloutStore
from . import ros_common as rc
from .panel_server import PanelServer

MARK_CODES = {MarkOutcome.Request.SUCCESS: "success", MarkOutcome.Request.FAILURE: "failure",
              MarkOutcome.Request.DISCARD: "discard"}
DECIDED = {"operator": EpisodeOutcome.DECIDED_BY_OPERATOR,
           "simulator": EpisodeOutcome.DECIDED_BY_SIMULATOR,
           "timeout": EpisodeOutcome.DECIDED_BY_TIMEOUT}


class EpisodeManagerNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("episode_manager_node", **kwargs)
        cfg = em.EpisodeManagerConfig(**rc.declare_settings(self, em.EpisodeManagerConfig))
        root = rc.declare(self, "store_root", rc.data_dir("rollouts"), "rollout store directory")
        keep = rc.declare(self, "keep_groups", 0, "prune to N groups (0 = keep all)", 0, 10**6)
        restore_srv = rc.declare(self, "restore_service", "restore_adapter",
                                 "learner_node's SelectAdapter service for rollbacks")
        reset_srv = rc.declare(self, "reset_service", "reset_scene", "ResetScene service name")
        ready_topic = rc.declare(self, "group_ready_topic", "group_ready",
                                 "GroupReady topic (absolute when one learner serves robots)")
        panel_port = rc.declare(self, "panel_port", 8080, "web panel port (0 = any, -1 = off)",
                                -1, 65535)
        panel_host = rc.declare(self, "panel_host", "127.0.0.1", "web panel bind address")
        panel_token = rc.declare(self, "panel_token", "", "required when not on localhost")
        joy_map = {a: rc.declare(self, f"joy_{a}_button", -1, f"Joy button for {a} (-1 = none)",
                                 -1, 127) for a in ("success", "failure", "discard", "ready")}
        joy_hold = rc.declare(self, "joy_hold_s", 0.3, "hold a Joy button this long to confirm",
                              0.0, 10.0)
        image_topic = rc.declare(self, "image_topic", "image_raw", "camera for the panel")
        self.task, self.joy = cfg.task, JoyMarker(joy_map, joy_hold)
        self.robot = self.get_namespace().strip("/").replace("/", "-") or "robot"
        self.pub_state = self.create_publisher(EpisodeState, "episode_state", rc.LATCHED)
        self.pub_outcome = self.create_publisher(EpisodeOutcome, "episode_outcome", rc.RELIABLE)
        self.pub_group = self.create_publisher(GroupReady, ready_topic, rc.LATCHED_HISTORY)
        self.last_image: Image | None = None
        self.learner_status: dict[str, float] = {}
        self.reset_client = self.create_client(ResetScene, reset_srv)
        self.reset_wanted, self.reset_future = None, None    # init id to reset to, its call
        self.machine = em.EpisodeMachine(
            cfg, RolloutStore(Path(root), keep, self.get_logger().error), self.robot, self)
        self.mark_episode, self.scene_is_ready, self.set_paused = \
            self.machine.mark, self.machine.scene_is_ready, self.machine.set_paused
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.waiting = ""                # what keeps an episode from running (on change: log)
        self.create_subscription(ActionChunk, "action_chunk", self.on_chunk, rc.RELIABLE)
        self.create_subscription(AdapterUpdate, "active_adapter", self.on_active, rc.LATCHED)
        self.create_subscription(Bool, "success", lambda m: self.machine.sim_succeeded(m.data),
                                 rc.LATCHED)
        self.create_subscription(AdapterUpdate, "adapter_update", self.on_learner,
                                 rc.LATCHED_HISTORY)
        self.create_subscription(Joy, "joy", self.on_joy, 10)
        self.create_subscription(Image, image_topic, lambda m: setattr(self, "last_image", m),
                                 qos_profile_sensor_data)
        self.create_service(MarkOutcome, "mark_outcome", self.on_mark)
        self.create_service(Trigger, "scene_ready", lambda q, r: self.answer(
            r, self.machine.scene_is_ready()))
        self.create_service(StartEpisode, "start", self.on_start)
        self.create_service(SetBool, "pause_learning", lambda q, r: self.answer(
            r, self.machine.set_paused(q.data)))
        self.create_service(Trigger, "evaluate_now", lambda q, r: self.answer(
            r, self.machine.request_evaluation()))
        reentrant = ReentrantCallbackGroup()
        self.create_service(SelectAdapter, "rollback_adapter", self.on_rollback,
                            callback_group=reentrant)
        self.select_client = self.create_client(SelectAdapter, "select_adapter",
                                                callback_group=reentrant)
        self.restore_client = self.create_client(SelectAdapter, restore_srv,
                                                 callback_group=reentrant)
        self.intervene_client = self.create_client(SetBool, "intervene", callback_group=reentrant)
        self.control = "policy"                      # who moves the arm (policy_node's control)
        self.create_subscription(String, "control", lambda m: setattr(self, "control", m.data),
                                 rc.LATCHED)
        self.create_timer(0.02, self.tick)
        self.create_timer(1.0, self.publish_diagnostics)
        self.publish_state()
        self.panel = None
        if panel_port >= 0:
            self.panel = PanelServer(self, panel_host, panel_port, panel_token)
            self.panel.start()
            self.get_logger().info(f"operator panel on http://{panel_host}:{self.panel.port}/")
        self.get_logger().info(f"episode manager: {cfg.task}, G={cfg.group_size}, "
                               f"init states {list(cfg.init_state_ids)}")
        self.publish_diagnostics()

    # ----- the machine's port -----
    def publish_state(self) -> None:
        m = self.machine if hasattr(self, "machine") else None
        msg = EpisodeState(state=m.state if m else em.IDLE, task_id=self.task,
                           group_size=m.cfg.group_size if m else 0)
        if m is not None:
            running = m.state in (em.RUNNING, em.STORING)
            msg.episode_id = m.ep.episode_id if running else ""
            msg.group_id, msg.group_index = m.group_id, m.group_index
            msg.init_state_id, msg.deterministic = max(m.ep.init_state_id, 0), \
                m.ep.deterministic
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_state.publish(msg)

    def publish_outcome(self, o: dict) -> None:
        msg = EpisodeOutcome(
            episode_id=o["episode_id"], group_id=o["group_id"], task_id=o["task"],
            init_state_id=o["init_state_id"], reward=o["reward"], success=o["success"],
            decided_by=DECIDED[o["decided_by"]], adapter_name=o["adapter_name"],
            adapter_version=o["adapter_version"], duration_s=o["duration_s"],
            chunk_count=o["chunk_count"], step_count=o["step_count"],
            corrected_steps=o["corrected_steps"])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_outcome.publish(msg)

    def publish_group(self, g: dict) -> None:
        msg = GroupReady(group_id=g["group_id"], task_id=g["task"],
                         init_state_id=g["init_state_id"], adapter_name=g["adapter_name"],
                         adapter_version=g["adapter_version"],
                         episode_paths=g["episode_paths"], rewards=g["rewards"])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_group.publish(msg)

    def request_reset(self, init_state_id: int) -> None:
        self.reset_wanted, self.reset_future = init_state_id, None

    def request_rollback(self, version: int) -> None:
        """The guard's rollback, off the executor (it waits for a service)."""
        def carry_out() -> None:
            ok, text = self.rollback(version)
            if ok:
                self.log("warning", f"regression guard: rollback to v{version}: {text}")
            else:
                self.machine.rollback_failed(version, text)
        threading.Thread(target=carry_out, name="guard_rollback", daemon=True).start()

    def log(self, level: str, text: str) -> None:
        rc.log_at(self.get_logger(), level, text)

    # ----- inputs -----
    def tick(self) -> None:
        if self.reset_wanted is not None:          # the simulator's reset service
            if self.reset_future is None:
                if self.reset_client.service_is_ready():
                    self.reset_future = self.reset_client.call_async(ResetScene.Request(
                        task_id=self.task, init_state_id=self.reset_wanted))
                else:
                    self.get_logger().warning("waiting for the reset_scene service ...",
                                              throttle_duration_sec=5.0)
            elif self.reset_future.done():
                res, self.reset_wanted, self.reset_future = self.reset_future.result(), None, \
                    None
                self.machine.reset_finished(res is not None and res.success,
                                            res.message if res else "no answer")
        self.machine.step()

    def on_chunk(self, msg: ActionChunk) -> None:
        Ta, Da = msg.horizon, msg.action_dim     # evaluation chunks carry no log-probs
        if not msg.episode_id or Ta == 0:         # a hold: nothing to record
            return
        try:    # the policy's chunk: what GRPO re-scores; the operator's: what it imitates
            frame = {"images": np.stack([rc.image_to_numpy(i) for i in msg.images]),
                     "states": np.asarray(msg.joint_positions, np.float32),
                     "executed": msg.executed_steps} | ({
                "chunk_index": msg.chunk_index, "actions": np.asarray(
                    msg.normalized_actions, np.float32).reshape(Ta, Da)} if msg.operator_steps
                else {"chains": np.asarray(msg.chain, np.float32).reshape(  # (K'+1, Ta, Da):
                    len(msg.step_timesteps) + 1, -1, Da),  # To-1 rows more than the actions
                      "log_probs": np.asarray(msg.log_probs, np.float32)})
        except (rc.BadImage, ValueError) as e:
            return self.get_logger().error(f"chunk {msg.chunk_index} of {msg.episode_id} "
                                           f"unreadable: {e}")
        if msg.operator_steps:
            return self.machine.add_operator_chunk(msg.episode_id, frame)
        self.machine.add_chunk(msg.episode_id, frame, msg.adapter_name, msg.adapter_version,
                               msg.instruction)

    def on_active(self, msg: AdapterUpdate) -> None:
        if msg.adapter_name == self.task:
            self.machine.set_version(msg.version)

    def on_learner(self, msg: AdapterUpdate) -> None:
        if msg.adapter_name != self.task or not msg.metric_names:
            return
        metrics = dict(zip(msg.metric_names, msg.metric_values))
        if "restored_from" in metrics:
            self.machine.restored(msg.version, int(metrics["restored_from"]))
        self.learner_status = {"version": int(msg.version)} | {
            k: float(v) for k, v in metrics.items()
            if k in ("loss", "approx_kl", "clip_fraction", "grad_norm", "skipped_fraction",
                     "groups", "seconds")}

    def on_joy(self, msg: Joy) -> None:
        for action in self.joy.update(list(msg.buttons), time.monotonic()):
            ok, text = (self.machine.scene_is_ready() if action == "ready"
                        else self.machine.mark("", action, "joy"))
            self.get_logger().info(f"joy {action}: {text}")

    @staticmethod
    def answer(resp, result: tuple[bool, str]):
        resp.success, resp.message = result
        return resp

    def on_mark(self, req: MarkOutcome.Request, resp: MarkOutcome.Response):
        outcome = MARK_CODES.get(req.outcome, str(req.outcome))
        resp.accepted, resp.message = self.machine.mark(req.episode_id, outcome, "service")
        return resp

    def on_start(self, req: StartEpisode.Request, resp: StartEpisode.Response):
        resp.accepted, resp.message = self.machine.request_start()
        resp.group_id = self.machine.group_id
        return resp

    def on_rollback(self, req: SelectAdapter.Request, resp: SelectAdapter.Response):
        resp.accepted, resp.message = self.rollback(req.version)
        resp.active_version = self.machine.version or 0
        return resp

    def rollback(self, version: int) -> tuple[bool, str]:
        """Learning goes on from stored `version` (learner_node's restore_adapter); with no
        learner (deployment), policy_node's select_adapter makes it active."""
        req = SelectAdapter.Request(adapter_name=self.task, version=int(version))
        for client, who in ((self.restore_client, "learner_node"),
                            (self.select_client, "policy_node")):
            if client.service_is_ready() or client.wait_for_service(timeout_sec=2.0):
                r = rc.call(client, req, who)
                return (bool(r.accepted), r.message) if r else (False, f"{who} did not answer")
        return False, "neither learner_node's restore nor policy_node's select service answers"

    def intervene(self, on: bool) -> tuple[bool, str]:
        """The panel's hold-to-intervene: policy_node's intervene service."""
        r = rc.call(self.intervene_client, SetBool.Request(data=on), "policy_node", 5.0)
        return (r.success, r.message) if r else (False, "policy_node's intervene does not answer")

    # ----- the panel's backend (and mark_episode, scene_is_ready, set_paused: the machine's) --
    def snapshot(self) -> dict:
        return self.machine.snapshot() | {"learner": self.learner_status,
                                          "control": self.control}

    def publish_diagnostics(self) -> None:
        """What the manager waits for, on start, on /diagnostics and in the log on change."""
        m, waiting = self.machine, self.machine.waiting_for()
        if waiting and waiting != self.waiting:
            self.get_logger().warning(f"waiting for {waiting}")
        self.waiting = waiting
        self.pub_diag.publish(rc.diagnostics(
            "episode_manager_node", [f"waiting for {waiting}"] if waiting else [],
            {"state": em.STATE_NAMES[m.state], "group": m.group_id, "version": m.version},
            self.get_clock().now().to_msg()))

    def thumbnail_jpeg(self) -> bytes | None:
        try:
            return thumbnail_jpeg(rc.image_to_numpy(self.last_image)) if self.last_image else None
        except (rc.BadImage, ValueError):
            return None

    def close(self) -> None:
        if self.panel is not None:
            self.panel.stop()


def main() -> None:
    rc.run(EpisodeManagerNode, threads=3)


if __name__ == "__main__":
    main()
