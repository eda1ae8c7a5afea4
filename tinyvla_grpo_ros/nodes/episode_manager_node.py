"""episode_manager_node: groups of G rollouts from the same initial state, outcomes, storage.

For each group: pick an init state, and G times: reset the scene (the simulator's reset_scene
service, or the operator via scene_ready), RUN (policy_node commands while EpisodeState is
RUNNING), end on the simulator's success, the operator's mark or a timeout, store the episode
atomically in the rollout store and publish EpisodeOutcome. A full group publishes GroupReady; the
next group starts once policy_node reports a new adapter version (or after `wait_for_update_s`).
After a restart, an unfinished group of the current version is resumed; a half-run episode was
never stored, so it is simply run again. Every `eval_every` versions (and when the operator asks:
evaluate_now), `eval_init_state_ids` run with the deterministic sampler (reported, never learned
from). The regression guard (core/regression_guard.py) compares each evaluation with the last
kept version's; a drop by more than `guard_margin` rolls back automatically: learner_node's
restore_adapter writes the good version again as the next one, which policy_node applies
between groups. The panel and the log say so.

Operator actions are ROS services first (mark_outcome, scene_ready, pause_learning,
rollback_adapter -> learner_node's restore_adapter, or policy_node's select_adapter when no
learner answers; start, evaluate_now); the web panel (panel_server.py) and
a gamepad / foot pedal (sensor_msgs/Joy on `joy`, rising edges, hold-to-confirm) call the same
methods.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, Joy
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from tinyvla_grpo_interfaces.msg import (
    ActionChunk,
    AdapterUpdate,
    EpisodeOutcome,
    EpisodeState,
    GroupReady,
)
from tinyvla_grpo_interfaces.srv import MarkOutcome, ResetScene, SelectAdapter, StartEpisode

from ..core.init_states import check_mode, latest_groups, pick_init_states
from ..core.regression_guard import RegressionGuard
from ..core.rollout_store import EpisodeRecord, RolloutStore, StoreError
from ..operator_input import JoyMarker
from .episode_operator import OperatorActions
from .panel_server import PanelServer
from .ros_common import LATCHED, LATCHED_HISTORY, RELIABLE, declare, image_to_numpy, run

DECIDED = {EpisodeOutcome.DECIDED_BY_OPERATOR: "operator",
           EpisodeOutcome.DECIDED_BY_SIMULATOR: "simulator",
           EpisodeOutcome.DECIDED_BY_TIMEOUT: "timeout"}


class EpisodeManagerNode(OperatorActions, Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("episode_manager_node", **kwargs)
        self.task = declare(self, "task", "reach-v3", "task (= adapter name)")
        self.G = declare(self, "group_size", 8, "rollouts per group (G)", 2, 1024)
        self.init_ids = list(declare(self, "init_state_ids", list(range(16)),
                                     "initial states the groups cycle through"))
        self.eval_ids = list(declare(self, "eval_init_state_ids", [-1],
                                     "init states of deterministic evaluation ([-1] = none)"))
        self.eval_every = declare(self, "eval_every", 1, "evaluate every N versions", 1, 10000)
        margin = declare(self, "guard_margin", 0.25, "roll back when an evaluation falls this "
                         "far below the last kept version's (1 = never)", 0.0, 1.0)
        self.guard = RegressionGuard(margin)
        restore_srv = declare(self, "restore_service", "restore_adapter",
                              "learner_node's SelectAdapter service for rollbacks")
        self.num_groups = declare(self, "num_groups", 0, "groups to run (0 = forever)", 0, 10**6)
        self.max_s = declare(self, "max_episode_s", 30.0, "episode timeout (s)", 0.1, 3600.0)
        self.max_chunks = declare(self, "max_chunks", 60, "episode timeout (chunks)", 1, 100000)
        root = declare(self, "store_root", "runs/rollouts", "rollout store directory")
        keep = declare(self, "keep_groups", 0, "prune to N groups (0 = keep all)", 0, 10**6)
        self.store = RolloutStore(Path(root), keep_groups=keep)
        self.reset_mode = declare(self, "reset_mode", "service", "service (sim) or operator")
        reset_srv = declare(self, "reset_service", "reset_scene", "ResetScene service name")
        self.wait_update = declare(self, "wait_for_update_s", 600.0,
                                   "max wait for a new version after a group", 0.0, 1e6)
        self.auto_start = declare(self, "auto_start", True, "start groups without an operator")
        self.init_sampling = check_mode(declare(
            self, "init_state_sampling", "uniform", "how groups draw init states: "
            "uniform, skip_solved or informative (core/init_states.py)"))
        seed = declare(self, "seed", 0, "init-state order seed", 0, 2**31 - 1)
        ready_topic = declare(self, "group_ready_topic", "group_ready",
                              "GroupReady topic (absolute when one learner serves robots)")
        self.robot = self.get_namespace().strip("/").replace("/", "-") or "robot"
        panel_port = declare(self, "panel_port", 8080, "web panel port (0 = any, -1 = off)",
                             -1, 65535)
        panel_host = declare(self, "panel_host", "127.0.0.1", "web panel bind address")
        panel_token = declare(self, "panel_token", "", "required when not bound to localhost")
        joy_map = {a: declare(self, f"joy_{a}_button", -1, f"Joy button for {a} (-1 = none)",
                              -1, 127) for a in ("success", "failure", "discard", "ready")}
        joy_hold = declare(self, "joy_hold_s", 0.3, "hold a Joy button this long to confirm",
                           0.0, 10.0)
        image_topic = declare(self, "image_topic", "image_raw", "camera for the panel thumbnail")
        self.rng = np.random.default_rng(seed)
        self.pub_state = self.create_publisher(EpisodeState, "episode_state", LATCHED)
        self.pub_outcome = self.create_publisher(EpisodeOutcome, "episode_outcome", RELIABLE)
        self.pub_group = self.create_publisher(GroupReady, ready_topic, LATCHED_HISTORY)
        self.create_subscription(ActionChunk, "action_chunk", self.on_chunk, RELIABLE)
        self.create_subscription(AdapterUpdate, "active_adapter", self.on_active, LATCHED)
        self.create_subscription(Bool, "success", self.on_success, LATCHED)
        self.create_service(MarkOutcome, "mark_outcome", self.on_mark)
        self.create_service(Trigger, "scene_ready", self.on_scene_ready)
        self.create_service(StartEpisode, "start", self.on_start)
        self.create_service(SetBool, "pause_learning", self.on_pause)
        self.create_service(Trigger, "evaluate_now", self.on_evaluate_now)
        self.eval_requested = False
        self.eval_from = 0
        reentrant = ReentrantCallbackGroup()
        self.create_service(SelectAdapter, "rollback_adapter", self.on_select,
                            callback_group=reentrant)
        self.select_client = self.create_client(SelectAdapter, "select_adapter",
                                                callback_group=reentrant)
        self.restore_client = self.create_client(SelectAdapter, restore_srv,
                                                 callback_group=reentrant)
        self.joy = JoyMarker(joy_map, joy_hold)
        self.create_subscription(Joy, "joy", self.on_joy, 10)
        self.create_subscription(Image, image_topic, self.on_image, qos_profile_sensor_data)
        self.create_subscription(AdapterUpdate, "adapter_update", self.on_learner,
                                 LATCHED_HISTORY)
        self.mark_lock = threading.Lock()
        self.marks = {"accepted": 0, "refused": 0}
        self.paused = False
        self.last_image: Image | None = None
        self.learner_status: dict[str, float | str] = {}
        self.history: dict[int, dict[str, list[bool]]] = defaultdict(
            lambda: {"explore": [], "eval": []})
        self.reset_client = self.create_client(ResetScene, reset_srv)
        self.version: int | None = None
        self.state = EpisodeState(state=EpisodeState.IDLE, task_id=self.task, group_size=self.G)
        # Groups already completed by this robot count towards num_groups, and their outcomes
        # towards init-state sampling, also after a restart: read once here, then kept up to
        # date by finish_group (no store scan when a group starts).
        done = self.completed_groups()
        self.groups_done = len(done)
        self.latest = latest_groups(done)   # init id -> (successes, G) of its latest group
        self.last_eval_version = -1
        self.chunks: list[ActionChunk] = []
        self.mark: tuple[int, str] | None = None
        self.sim_success = False
        self.started_at = 0.0
        self.waiting_since = 0.0
        self.reset_future = None
        self.scene_ready = False
        self.queue: list[tuple[int, bool]] = []        # (init id, deterministic) still to run
        self.start_requested = self.auto_start
        self.create_timer(0.02, self.step)
        self.publish_state()
        self.panel = None
        if panel_port >= 0:
            self.panel = PanelServer(self, panel_host, panel_port, panel_token)
            self.panel.start()
            self.get_logger().info(f"operator panel on http://{panel_host}:{self.panel.port}/")
        self.get_logger().info(f"episode manager: {self.task}, G={self.G}, "
                               f"init states {self.init_ids}")

    # ----- inputs -----
    def on_active(self, msg: AdapterUpdate) -> None:
        if msg.adapter_name == self.task:
            self.version = int(msg.version)

    def on_success(self, msg: Bool) -> None:
        self.sim_success = bool(msg.data)

    def on_chunk(self, msg: ActionChunk) -> None:
        if self.state.state == EpisodeState.RUNNING and msg.episode_id == self.state.episode_id:
            self.chunks.append(msg)

    def on_image(self, msg: Image) -> None:
        self.last_image = msg

    def on_learner(self, msg: AdapterUpdate) -> None:
        if msg.adapter_name == self.task and "restored_from" in msg.metric_names:
            src = int(msg.metric_values[list(msg.metric_names).index("restored_from")])
            self.guard.restored(int(msg.version), src)
        if msg.adapter_name == self.task and msg.metric_names:
            self.learner_status = {"version": int(msg.version)} | {
                k: float(v) for k, v in zip(msg.metric_names, msg.metric_values)
                if k in ("loss", "approx_kl", "clip_fraction", "grad_norm", "skipped_fraction",
                         "groups", "seconds")}

    # ----- the state machine -----
    def step(self) -> None:
        s = self.state.state
        if s == EpisodeState.IDLE:
            self.maybe_start_group()
        elif s == EpisodeState.RESETTING:
            self.poll_reset()
        elif s == EpisodeState.RUNNING:
            self.poll_running()
        elif s == EpisodeState.WAITING_FOR_UPDATE:
            if self.version != self.group_version or \
                    time.monotonic() - self.waiting_since > self.wait_update:
                self.set_state(EpisodeState.IDLE)

    def maybe_start_group(self) -> None:
        if not self.start_requested or self.version is None or self.paused:
            return
        self.group_version = self.version
        due = self.version != self.last_eval_version and self.version % self.eval_every == 0 \
            and self.guard.needs_evaluation(self.version)
        if self.eval_ids != [-1] and (due or self.eval_requested):
            self.last_eval_version, self.eval_requested = self.version, False
            self.eval_from = len(self.history[self.version]["eval"])
            self.begin_group(f"eval-{self.task}-v{self.version:04d}-{uuid.uuid4().hex[:4]}",
                             -1, [(i, True) for i in self.eval_ids])
            return
        if self.num_groups and self.groups_done >= self.num_groups:
            return
        resumed = self.resumable_group()
        if resumed:
            gid, init_id, done = resumed
            self.get_logger().info(f"resuming group {gid} ({done}/{self.G} stored)")
            self.begin_group(gid, init_id, [(init_id, False)] * (self.G - done), done)
            return
        init_id = self.pick_init_state()
        gid = f"{self.robot}-{self.task}-v{self.version:04d}-s{init_id:05d}-{uuid.uuid4().hex[:6]}"
        self.begin_group(gid, init_id, [(init_id, False)] * self.G)

    def resumable_group(self):
        for gid in reversed(self.store.groups(self.task)):
            if not gid.startswith(self.robot + "-"):
                continue                                # another robot's group
            meta = self.store.group_meta(self.task, gid)
            n = len(self.store.episode_ids(self.task, gid))
            if meta["adapter_version"] == self.version and n < self.G:
                return gid, int(meta["init_state_id"]), n
        return None

    def completed_groups(self) -> list[tuple[int, list[bool]]]:
        """(init id, successes) of this robot's complete explore groups in the store, oldest
        first (evaluation groups are named eval-..., not after the robot)."""
        done = []
        for gid in self.store.groups(self.task):
            if gid.startswith(self.robot + "-"):
                eps = self.store.read_group(self.task, gid, with_tensors=False)
                if len(eps) >= self.G:
                    done.append((eps[0].init_state_id, [e.success for e in eps]))
        return done

    def pick_init_state(self) -> int:
        return pick_init_states(self.init_ids, self.latest, self.init_sampling, self.rng)[0]

    def begin_group(self, gid: str, init_id: int, queue, done: int = 0) -> None:
        self.state.group_id, self.state.group_index = gid, done
        self.state.init_state_id = max(init_id, 0)
        self.queue = list(queue)
        self.next_episode()

    def next_episode(self) -> None:
        if not self.queue:
            self.finish_group()
            return
        init_id, det = self.queue[0]
        self.state.init_state_id, self.state.deterministic = init_id, det
        self.state.episode_id = ""
        self.sim_success, self.scene_ready, self.mark, self.chunks = False, False, None, []
        self.set_state(EpisodeState.RESETTING)
        if self.reset_mode == "service":
            if not self.reset_client.wait_for_service(timeout_sec=0.0):
                self.get_logger().warning("waiting for the reset_scene service ...",
                                          throttle_duration_sec=5.0)
            self.reset_future = None

    def poll_reset(self) -> None:
        if self.reset_mode == "operator":
            if self.scene_ready:
                self.begin_running()
            return
        if self.reset_future is None:
            if self.reset_client.service_is_ready():
                self.reset_future = self.reset_client.call_async(ResetScene.Request(
                    task_id=self.task, init_state_id=self.state.init_state_id))
            return
        if self.reset_future.done():
            res = self.reset_future.result()
            self.reset_future = None
            if res is None or not res.success:
                self.get_logger().error(f"reset failed: {res.message if res else 'no answer'}")
                return                                      # retried on the next tick
            self.sim_success = False
            self.begin_running()

    def begin_running(self) -> None:
        self.state.episode_id = f"ep-{uuid.uuid4().hex[:10]}"
        self.started_at = time.monotonic()
        self.set_state(EpisodeState.RUNNING)

    def poll_running(self) -> None:
        elapsed = time.monotonic() - self.started_at
        if self.mark is not None:
            outcome, _ = self.mark
            if outcome == MarkOutcome.Request.DISCARD:
                self.get_logger().info(f"episode {self.state.episode_id} discarded by operator")
                self.set_state(EpisodeState.STORING)
                self.next_episode()
                return
            self.end_episode(outcome == MarkOutcome.Request.SUCCESS,
                             EpisodeOutcome.DECIDED_BY_OPERATOR)
        elif self.sim_success and self.reset_mode == "service":
            self.end_episode(True, EpisodeOutcome.DECIDED_BY_SIMULATOR)
        elif elapsed > self.max_s or len(self.chunks) >= self.max_chunks:
            self.end_episode(False, EpisodeOutcome.DECIDED_BY_TIMEOUT)

    def end_episode(self, success: bool, decided_by: int) -> None:
        self.set_state(EpisodeState.STORING)
        duration = time.monotonic() - self.started_at
        chunks = list(self.chunks)
        versions = {(c.adapter_name, c.adapter_version) for c in chunks}
        init_id, det = self.queue[0]
        outcome = EpisodeOutcome(
            episode_id=self.state.episode_id, group_id=self.state.group_id, task_id=self.task,
            init_state_id=max(init_id, 0), reward=1.0 if success else 0.0, success=success,
            decided_by=decided_by, adapter_name=self.task, duration_s=duration,
            chunk_count=len(chunks))
        outcome.adapter_version = chunks[0].adapter_version if chunks else (self.version or 0)
        if not chunks or len(versions) != 1:
            why = "no chunks" if not chunks else f"chunks from several versions {versions}"
            self.get_logger().warning(f"episode {self.state.episode_id} not stored: {why}; "
                                      "running it again")
            self.next_episode()
            return
        if not det:
            try:
                self.store.write_episode(self.to_record(chunks, outcome, decided_by))
            except StoreError as e:
                self.get_logger().error(f"{e}; the episode is discarded and run again")
                self.next_episode()
                return
        outcome.header.stamp = self.get_clock().now().to_msg()
        self.pub_outcome.publish(outcome)
        self.history[outcome.adapter_version]["eval" if det else "explore"].append(success)
        self.get_logger().info(
            f"{'eval ' if det else ''}episode {outcome.episode_id} v{outcome.adapter_version} "
            f"init {init_id}: {'success' if success else 'failure'} ({DECIDED[decided_by]}, "
            f"{len(chunks)} chunks, {duration:.1f} s)")
        self.queue.pop(0)
        self.state.group_index += 1
        self.next_episode()

    def to_record(self, chunks: list[ActionChunk], o: EpisodeOutcome, decided_by: int
                  ) -> EpisodeRecord:
        c0 = chunks[0]
        Ta, Da = c0.horizon, c0.action_dim
        Kp = len(c0.log_probs)
        tensors = {
            "images": torch.from_numpy(np.stack([np.stack([image_to_numpy(i) for i in c.images])
                                                 for c in chunks])),
            "states": torch.tensor(np.array([c.joint_positions for c in chunks]),
                                   dtype=torch.float32),
            "chains": torch.tensor(np.array([np.asarray(c.chain, np.float32).reshape(
                Kp + 1, Ta, Da) for c in chunks])),
            "log_probs": torch.tensor(np.array([np.asarray(c.log_probs, np.float32)
                                                for c in chunks])),
            "executed": torch.tensor([c.executed_steps for c in chunks])}
        return EpisodeRecord(
            episode_id=o.episode_id, group_id=o.group_id, task=self.task,
            init_state_id=o.init_state_id, adapter_name=c0.adapter_name,
            adapter_version=c0.adapter_version, instruction=c0.instruction, reward=o.reward,
            success=o.success, decided_by=DECIDED[decided_by], duration_s=o.duration_s,
            tensors=tensors)

    def finish_group(self) -> None:
        gid = self.state.group_id
        if gid.startswith("eval-"):
            self.set_state(EpisodeState.IDLE)
            self.guard_check(self.group_version)
            return
        eps = self.store.read_group(self.task, gid, with_tensors=False)
        msg = GroupReady(group_id=gid, task_id=self.task, init_state_id=eps[0].init_state_id,
                         adapter_name=eps[0].adapter_name, adapter_version=eps[0].adapter_version,
                         episode_paths=[str(e.path) for e in eps],
                         rewards=[e.reward for e in eps])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_group.publish(msg)
        self.groups_done += 1
        self.latest.update(latest_groups([(eps[0].init_state_id, [e.success for e in eps])]))
        self.get_logger().info(f"group {gid} ready: {sum(e.success for e in eps)}/{len(eps)} "
                               "successes")
        if len({e.reward for e in eps}) == 1:
            self.set_state(EpisodeState.IDLE)        # no signal: the learner will not update
            return
        self.waiting_since = time.monotonic()
        self.set_state(EpisodeState.WAITING_FOR_UPDATE)

    def set_state(self, state: int) -> None:
        self.state.state = state
        self.publish_state()

    def publish_state(self) -> None:
        self.state.header.stamp = self.get_clock().now().to_msg()
        self.pub_state.publish(self.state)

    def close(self) -> None:
        if self.panel is not None:
            self.panel.stop()


def main() -> None:
    run(EpisodeManagerNode, threads=3)


if __name__ == "__main__":
    main()
