"""policy_node: samples action chunks from cameras + joint states, commands the arm, hot-swaps.

In: <camera_topics>, joint_states, episode_state, estop; out: action_chunk (actions + what GRPO
needs to re-score them), the JointTrajectory command (joint_trajectory mode), /diagnostics;
service enable; adapters: adapter_swaps.AdapterTopics; the operator's takeover: operator_io. It
commands only while an episode RUNS, the node is enabled and no e-stop is latched, from fresh
inputs, within `action_low/high` and `max_delta_per_step`, the policy's chunks or (takeover) the
operator's; it holds when the episode stops, on disable, e-stop and by the watchdog. Inference
runs on a worker thread, swaps on a loader thread. Settings: core/config.PolicyNodeConfig,
core/takeover.TakeoverConfig and the sampler's recipe fields.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState
from trajectory_msgs.msg import JointTrajectory

from ..core.chunk_schedule import ChunkSchedule
from ..core.config import PolicyNodeConfig, resolve_device
from ..core.inputs import Freshness
from ..core.policy_runtime import PolicyRuntime
from ..core.safety import ActionLimits, Watchdog
from . import policy_io
from . import ros_common as rc
from .adapter_swaps import AdapterSwaps, AdapterTopics
from .operator_io import OperatorControl


class PolicyNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("policy_node", **kwargs)
        ckpt, self.tasks, root, adapter_cfg = rc.declare_model(self)
        self.instructions = dict(zip(self.tasks, rc.declare(
            self, "instructions", ["reach the red goal"], "instruction per task (same order)")))
        self.joint_names = rc.declare_required(self, "joint_names", "the robot state's joint "
                                            "names, in the order the model was trained with")
        self.action_names = rc.declare_required(self, "action_names", "names of the action "
                                             "dimensions (joint names for joint positions)")
        cfg = self.cfg = PolicyNodeConfig(**rc.declare_settings(self, PolicyNodeConfig))
        lo, hi = (rc.declare(self, f"action_{k}", [v] * len(self.action_names), f"{k} limit "
                             "per action dimension") for k, v in (("low", -1.0), ("high", 1.0)))
        sampler_overrides = rc.declare_sampler(self, ckpt)
        self.cameras, self.mode, self.enabled, self.control_dt = list(cfg.camera_topics), \
            cfg.command_mode, cfg.enabled, 1.0 / cfg.control_rate_hz
        self.limits = ActionLimits(np.array(lo), np.array(hi), cfg.max_delta_per_step)
        self.watchdog = Watchdog(cfg.watchdog_s)
        self.last_command = self.last_sent = None    # rate limit's start; where a hold stays
        self.runtime = PolicyRuntime(ckpt, self.tasks, root, adapter_cfg, sampler_overrides,
                                     resolve_device(cfg.device))
        self.n_exec = self.runtime.sampler.executed_steps()
        self.operator = OperatorControl(
            self, self.action_names, self.limits, lambda: self.episode.state ==
            EpisodeState.RUNNING, self.runtime.policy.model, self.n_exec, self.cameras,
            self.joint_names)
        self.gen, self.inputs = torch.Generator().manual_seed(cfg.seed), policy_io.Inputs(
            self.cameras, self.joint_names, Freshness(cfg.stale_after_s, cfg.future_tolerance_s),
            self.runtime.policy.model.config.image_size, cfg.image_fit, self.tasks, self.limits,
            self.action_names, self.runtime.policy.model.config, cfg)
        self.episode, self.estop, self.chunk_index = EpisodeState(), False, 0
        self.last_decision_stamp: dict[str, int] = {}   # camera stamps of the last decision
        self.missed_for, self.image_arrival, self.busy = {}, time.monotonic(), threading.Lock()
        self.stats = {"decisions": 0, "missed": 0, "missed_by_swap": 0, "swaps": 0, "stale": 0,
                      "holds": 0, "watchdog_holds": 0, "images": 0}
        self.gc = rc.GcPauses()
        # why no command goes out (cleared by a decision); inputs never seen yet (said on change)
        self.problem, self.waiting = "", None
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.swaps = AdapterSwaps(self.runtime, lambda: self.cfg.swap_between == "chunks" or
                                  self.between_groups(), self.swapped, self.get_logger())
        for topic in self.cameras:
            self.create_subscription(Image, topic, lambda m, t=topic: self.on_image(t, m),
                                     qos_profile_sensor_data)
        self.create_subscription(JointState, "joint_states", lambda m: self.inputs.on_joints(
            m, time.monotonic()), qos_profile_sensor_data)
        self.create_subscription(EpisodeState, "episode_state", self.on_episode, rc.LATCHED)
        self.create_subscription(Bool, "estop", self.on_estop, rc.RELIABLE)
        self.pub_chunk = self.create_publisher(ActionChunk, "action_chunk", rc.RELIABLE)
        self.pub_traj = self.create_publisher(JointTrajectory, cfg.controller_topic, rc.RELIABLE) \
            if self.mode == "joint_trajectory" else None     # only a commanded controller
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.adapters = AdapterTopics(self, self.swaps, self.tasks, cfg.adapter_update_topic)
        self.create_service(SetBool, "enable", self.on_enable)
        self.period = self.n_exec * self.control_dt
        # at most one decision per period; 0: every fresh image (a sim's one per decision)
        self.schedule = ChunkSchedule(self.period if cfg.decision_period_s < 0 else
                                      cfg.decision_period_s, cfg.pipeline_lead_s)
        self.create_timer(min(self.period, 0.01 if cfg.pipeline_lead_s else 0.02), self.decide)
        self.create_timer(1.0, self.publish_diagnostics)
        self.create_timer(0.1, self.check_watchdog)
        self.adapters.publish_active()
        self.publish_diagnostics()
        self.get_logger().info(f"policy ready: tasks {self.tasks}, {self.mode} mode, "
                               f"decision every {self.period * 1e3:.0f} ms")

    # ----- inputs -----
    def on_image(self, topic: str, msg: Image) -> None:
        self.image_arrival = time.monotonic()
        self.inputs.on_image(topic, msg, self.image_arrival)
        self.stats["images"] += 1
        if len(self.inputs.images) == len(self.cameras):
            self.decide()                       # react at once; the timer is the fallback

    def on_episode(self, msg: EpisodeState) -> None:
        was_running = self.episode.state == EpisodeState.RUNNING
        self.episode = msg
        if msg.task_id and msg.task_id in self.tasks and msg.task_id != self.runtime.active[0]:
            self.runtime.select_task(msg.task_id)
        if msg.state == EpisodeState.RUNNING and msg.episode_id != getattr(self, "_ep", None):
            self._ep, self.chunk_index, self.last_command = msg.episode_id, 0, None
            self.watchdog.arm(time.monotonic())
            self.schedule.reset()
            self.inputs.restart_history()
            self.operator.end_episode()
        if was_running and msg.state != EpisodeState.RUNNING:
            self.watchdog.disarm()
            self.operator.end_episode()
            self.send_hold("episode ended")
        self.swaps.apply_later()

    def on_estop(self, msg: Bool) -> None:
        if msg.data and not self.estop:
            self.get_logger().error("e-stop: holding the arm until the e-stop topic is cleared")
            self.send_hold("e-stop")
        elif not msg.data and self.estop:
            self.get_logger().info("e-stop cleared")
            self.watchdog.arm(time.monotonic())
        self.estop = bool(msg.data)

    def on_enable(self, req: SetBool.Request, resp: SetBool.Response):
        was, self.enabled = self.enabled, bool(req.data)
        if not self.enabled:
            self.send_hold("disabled")
        elif not was:
            self.watchdog.arm(time.monotonic())
        resp.success, resp.message = True, f"policy {'enabled' if self.enabled else 'disabled'}"
        return resp

    # ----- decisions -----
    def decide(self) -> None:
        if self.episode.state != EpisodeState.RUNNING or not self.enabled or self.estop:
            return
        stamp = {t: Time.from_msg(m.header.stamp).nanoseconds
                 for t, (m, _) in self.inputs.images.items()}
        if not stamp or stamp == self.last_decision_stamp or \
                not self.schedule.due(time.monotonic()):
            return        # no fresh image since the last chunk, or not due (the timer decides)
        if not self.busy.acquire(blocking=False):
            # missed: a fresh observation waits over a period for the model (counted once)
            if time.monotonic() - self.image_arrival > self.period and \
                    self.missed_for != stamp:
                self.missed_for = stamp
                self.stats["missed"] += 1
            return
        obs = self.inputs.for_decision(self.episode.task_id, self.get_clock().now(),
                                       time.monotonic())
        if isinstance(obs, str):
            self.busy.release()
            self.stats["stale"] += 1
            return self.set_problem(obs)
        self.last_decision_stamp = stamp
        self.set_problem("")
        due = self.schedule.begin(time.monotonic())
        (self.operate if self.operator.active else   # the operator's: no model, this thread
         lambda *a: self.worker.submit(self.infer, *a))(obs, self.episode, due)

    def infer(self, obs, episode: EpisodeState, due: float) -> None:   # due: see ChunkSchedule
        try:
            t0 = time.perf_counter()
            task = episode.task_id or self.tasks[0]
            # paired evaluations: every version meets the same x_K in the same scene
            pairing = (self.cfg.seed, episode.init_state_id, self.chunk_index)
            chunk, adapter, version = self.runtime.act(
                obs.images, obs.state, self.instructions.get(task, task), self.gen,
                deterministic=episode.deterministic,
                paired=pairing if episode.deterministic else None)
            prev = ActionLimits.previous(self.action_names, self.joint_names, obs.current,
                                         self.last_command)
            actions = self.limits.apply(chunk.actions[0].numpy(), prev)
            msg = policy_io.chunk_message(
                chunk, actions, self.runtime.sampler, adapter, version, episode,
                self.chunk_index, obs, self.cameras, self.joint_names, self.action_names,
                self.instructions.get(episode.task_id, episode.task_id))
            self.stats["last_decision_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
            if self.operator.active or not self.command(msg, actions, episode, due):
                return               # the episode ended, or the operator took over, meanwhile
            self.stats["decisions"] += 1
            if self.cfg.swap_between == "chunks":
                self.swaps.apply_if_allowed()
        except Exception as e:  # noqa: BLE001 - a failed decision must not kill the node
            self.get_logger().error(f"inference failed: {e!r}")
            self.set_problem(f"inference failed: {e}")
        finally:
            self.busy.release()

    def operate(self, obs, episode: EpisodeState, due: float) -> None:
        """A decision under takeover: the operator's command, or a hold when it has none."""
        try:
            out = self.operator.decide(obs, episode, self.chunk_index, ActionLimits.previous(
                self.action_names, self.joint_names, obs.current, self.last_command),
                self.send_hold, self.instructions.get(episode.task_id, episode.task_id))
            if isinstance(out, str):
                self.problem = out               # said once, by the hold it sent
            else:
                self.command(*out, episode, due)
        except Exception as e:  # noqa: BLE001 - a failed decision must not kill the node
            self.set_problem(f"operator command failed: {e!r}")      # logged
        finally:
            self.busy.release()

    def command(self, msg, actions: np.ndarray, episode: EpisodeState, due: float) -> bool:
        """Stamp a chunk for when it starts on the arm and send it, unless the episode ended
        or the node was disabled / e-stopped meanwhile."""
        now = time.monotonic()
        msg.header.stamp = (self.get_clock().now() + Duration(nanoseconds=int(
            1e9 * (self.schedule.finished(due, now) - now)))).to_msg()
        if self.episode.state != EpisodeState.RUNNING or self.episode.episode_id != \
                episode.episode_id or not self.enabled or self.estop:
            return False
        self.pub_chunk.publish(msg)
        if self.mode == "joint_trajectory":
            self.pub_traj.publish(policy_io.trajectory(
                self.action_names, actions[: self.n_exec], self.control_dt, msg.header.stamp))
        self.last_command = self.last_sent = actions[self.n_exec - 1].copy()
        self.watchdog.feed(time.monotonic())
        self.chunk_index += 1
        return True

    def send_hold(self, why: str) -> None:
        """Stop the arm where it is: an empty chunk (sim) / the current positions (controller)."""
        hold = policy_io.hold_chunk(self.action_names)
        hold.header.stamp = self.get_clock().now().to_msg()
        self.pub_chunk.publish(hold)
        target = self.limits.hold_target(self.last_sent, self.inputs.last_good)
        if self.mode == "joint_trajectory" and target is not None:
            self.pub_traj.publish(policy_io.hold_trajectory(target, self.action_names,
                                                            self.control_dt))
        self.last_command = None
        self.schedule.reset()
        self.stats["holds"] += 1
        self.get_logger().info(f"hold sent ({why})")

    def check_watchdog(self) -> None:
        if self.episode.state != EpisodeState.RUNNING or not self.enabled or self.estop:
            return
        age = self.watchdog.expired(time.monotonic())
        if age is not None:
            self.stats["watchdog_holds"] += 1
            why = f"watchdog: no fresh chunk for {age:.2f} s" + (
                f" ({self.problem})" if self.problem else "")
            self.send_hold(why)
            self.set_problem(why)

    # ----- adapters -----
    def between_groups(self) -> bool:
        return self.episode.state in (EpisodeState.IDLE, EpisodeState.WAITING_FOR_UPDATE)

    def swapped(self, p, held_ms: float) -> None:
        self.stats["swaps"] += 1
        self.stats["missed_by_swap"] += not self.between_groups() and held_ms > self.period * 1e3
        self.adapters.publish_active()

    # ----- diagnostics -----
    def set_problem(self, text: str) -> None:
        if text and text != self.problem:
            self.get_logger().warning(f"no command: {text}")
        self.problem = text

    def publish_diagnostics(self) -> None:
        waiting = self.inputs.waiting_for()
        if waiting != self.waiting and waiting:
            self.get_logger().warning(f"waiting for {waiting}")
        self.waiting = waiting
        self.pub_diag.publish(policy_io.diagnostics(self, waiting))

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)
        self.swaps.close()


def main() -> None:
    torch.set_num_threads(1)    # one intra-op thread: torch's pool would fight the node's own
    rc.run(PolicyNode, events=True)    # inference, swaps: own threads; callbacks only convert


if __name__ == "__main__":
    main()
