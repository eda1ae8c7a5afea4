"""The episode manager's state machine: groups of G rollouts, outcomes, evaluation, storage.

For each group: pick an init state, and G times: reset the scene (the simulator's service, or
the operator's scene_ready), RUN (the policy commands the arm while RUNNING), end on the
simulator's success, the operator's mark or a timeout, store the episode atomically in the
rollout store and report its outcome. A full group is reported (the learner's GroupReady); the
next group starts once a new adapter version is active (or after `wait_for_update_s`). After a
restart an unfinished group of the current version is resumed; a half-run episode was never
stored, so it is simply run again. Every `eval_every` versions (and when the operator asks),
`eval_init_state_ids` run with the deterministic sampler (reported, never learned from); the
regression guard (regression_guard.py) judges each evaluation and may roll the version back.

    IDLE -> RESETTING -> RUNNING -> STORING -> (next episode: RESETTING | group done: IDLE or
    WAITING_FOR_UPDATE) ; WAITING_FOR_UPDATE -> IDLE when the version changes or on timeout

No ROS here: episode_manager_node feeds it messages and carries out what it asks through a
`Port` (publish the state, an outcome, a finished group; call the reset service; roll back).
Every public method takes one lock: the node's executor threads and the panel's HTTP threads
may call at once, and an operator's double click is refused, not counted twice.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .config import GRPOConfig
from .corrections import operator_chunks
from .grpo import outcome_reward
from .init_states import SAMPLING_MODES, latest_groups, pick_init_states
from .recipe import check_ranges, same_as, setting
from .regression_guard import RegressionGuard
from .rollout_store import RolloutStore, StoreError, episode_record

IDLE, RESETTING, RUNNING, STORING, WAITING_FOR_UPDATE = range(5)
STATE_NAMES = {IDLE: "IDLE", RESETTING: "RESETTING", RUNNING: "RUNNING", STORING: "STORING",
               WAITING_FOR_UPDATE: "WAITING_FOR_UPDATE"}
OUTCOMES = ("success", "failure", "discard")


@dataclass(frozen=True)
class EpisodeManagerConfig:
    """episode_manager_node's settings (its parameters are derived from these fields)."""

    task: str = setting("reach-v3", "task (= adapter name)")
    group_size: int = same_as(GRPOConfig, "group_size")     # the learner's G
    init_state_ids: tuple[int, ...] = setting(tuple(range(16)), "initial states the groups "
                                              "draw from")
    init_state_sampling: str = setting("informative", "how groups draw init states "
                                       "(core/init_states.py)", choices=SAMPLING_MODES)
    eval_init_state_ids: tuple[int, ...] = setting((-1,), "init states of the deterministic "
                                                   "evaluation ([-1] = none)")
    eval_every: int = setting(1, "evaluate every N versions", lo=1, hi=10_000)
    guard_margin: float = setting(0.25, "roll back when an evaluation falls this far below "
                                  "the last kept version's (1 = never)", lo=0.0, hi=1.0)
    num_groups: int = setting(0, "groups to run (0 = forever)", lo=0, hi=10**6)
    max_episode_s: float = setting(30.0, "episode timeout (s)", lo=0.1, hi=3600.0)
    max_chunks: int = setting(60, "episode timeout (chunks)", lo=1, hi=100_000)
    reset_mode: str = setting("service", "who resets the scene: the simulator's service or "
                              "the operator (scene_ready)", choices=("service", "operator"))
    wait_for_update_s: float = setting(600.0, "max wait for a new version after a group with "
                                       "signal", lo=0.0, hi=1e6)
    auto_start: bool = setting(True, "start groups without an operator's start")
    seed: int = setting(0, "init-state draw seed", lo=0, hi=2**31 - 1)

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.init_state_ids:
            raise ValueError("init_state_ids must name at least one initial state")


class Port(Protocol):
    """What the machine asks of its node."""

    def publish_state(self) -> None: ...
    def publish_outcome(self, outcome: dict) -> None: ...
    def publish_group(self, group: dict) -> None: ...
    def request_reset(self, init_state_id: int) -> None: ...
    def request_rollback(self, version: int) -> None: ...
    def log(self, level: str, text: str) -> None: ...


@dataclass
class Episode:
    """The episode in progress and what it has recorded so far."""

    init_state_id: int = 0
    deterministic: bool = False
    episode_id: str = ""
    started_at: float = 0.0
    frames: list[dict] = field(default_factory=list)
    op_frames: list[dict] = field(default_factory=list)   # the operator's chunks (takeover)
    versions: set[tuple[str, int]] = field(default_factory=set)
    instruction: str = ""
    mark: tuple[str, str] | None = None          # (outcome, source)
    sim_success: bool = False
    scene_ready: bool = False


class EpisodeMachine:
    def __init__(self, cfg: EpisodeManagerConfig, store: RolloutStore, robot: str,
                 port: Port) -> None:
        self.cfg, self.store, self.robot, self.port = cfg, store, robot, port
        self.lock = threading.RLock()
        self.guard = RegressionGuard(cfg.guard_margin)
        self.rng = np.random.default_rng(cfg.seed)
        self.state, self.group_id, self.group_index = IDLE, "", 0
        self.ep = Episode()
        self.queue: list[tuple[int, bool]] = []     # (init id, deterministic) still to run
        self.version: int | None = None
        self.group_version = -1
        self.paused, self.start_requested = False, cfg.auto_start
        self.eval_requested, self.eval_from, self.last_eval_version = False, 0, -1
        self.waiting_since = 0.0
        self.marks = {"accepted": 0, "refused": 0}
        self.history: dict[int, dict[str, list]] = defaultdict(
            lambda: {"explore": [], "eval": [], "steps": [0, 0]})   # [corrected, all] steps
        # This robot's completed groups count towards num_groups and init-state sampling, also
        # after a restart: read once here, then kept up to date when a group finishes.
        done = self.completed_groups()
        self.groups_done, self.latest = len(done), latest_groups(done)

    # ----- inputs -----
    def set_version(self, version: int) -> None:
        with self.lock:
            self.version = int(version)

    def add_chunk(self, episode_id: str, frame: dict, adapter: str, version: int,
                  instruction: str) -> bool:
        """A chunk the policy executed; kept when it belongs to the running episode."""
        with self.lock:
            if self.state != RUNNING or episode_id != self.ep.episode_id:
                return False
            self.ep.frames.append(frame)
            self.ep.versions.add((adapter, int(version)))
            self.ep.instruction = instruction
            return True

    def add_operator_chunk(self, episode_id: str, frame: dict) -> bool:
        """A chunk the operator drove (takeover): {chunk_index, images, states, actions (Ta, Da)
        normalized, executed}; kept when it belongs to the running episode."""
        with self.lock:
            if self.state != RUNNING or episode_id != self.ep.episode_id:
                return False
            self.ep.op_frames.append(frame)
            return True

    def sim_succeeded(self, success: bool) -> None:
        with self.lock:
            self.ep.sim_success = bool(success)

    def mark(self, episode_id: str, outcome: str, source: str) -> tuple[bool, str]:
        """Mark the running episode once; every further mark of it is refused (double click)."""
        if outcome not in OUTCOMES:
            return False, f"unknown outcome {outcome!r}; use success, failure or discard"
        with self.lock:
            ep = episode_id or self.ep.episode_id
            if self.state != RUNNING or ep != self.ep.episode_id:
                ok, msg = False, f"episode {ep or '(none)'} is not running (marked or ended)"
            elif self.ep.mark is not None:
                ok, msg = False, f"episode {ep} is already marked"
            elif not self.ep.frames:
                ok, msg = False, f"episode {ep} has no action chunk yet: nothing to mark"
            else:
                self.ep.mark = (outcome, source)
                ok, msg = True, f"episode {ep} marked {outcome} ({source})"
            self.marks["accepted" if ok else "refused"] += 1
        return ok, msg

    def scene_is_ready(self) -> tuple[bool, str]:
        with self.lock:
            if self.state != RESETTING or self.cfg.reset_mode != "operator":
                return False, "not waiting for a scene reset"
            self.ep.scene_ready = True
            return True, "starting the episode"

    def reset_finished(self, ok: bool, message: str) -> None:
        """The simulator's reset service answered (service mode)."""
        with self.lock:
            if self.state != RESETTING:
                return
            if not ok:
                self.port.log("error", f"reset failed: {message}")
                self.port.request_reset(self.ep.init_state_id)      # try again
                return
            self.ep.sim_success = False
            self.begin_running(time.monotonic())

    def set_paused(self, paused: bool) -> tuple[bool, str]:
        with self.lock:
            self.paused = bool(paused)
        return True, ("learning paused: no new group starts" if paused else "learning resumed")

    def request_start(self) -> tuple[bool, str]:
        with self.lock:
            self.start_requested = True
        return True, "groups will run"

    def request_evaluation(self) -> tuple[bool, str]:
        if list(self.cfg.eval_init_state_ids) == [-1]:
            return False, "no eval_init_state_ids configured"
        with self.lock:
            self.eval_requested = True
        return True, "the next group evaluates the active version"

    def restored(self, version: int, source: int) -> None:
        """The learner wrote `source` again as `version` (a rollback)."""
        with self.lock:
            self.guard.restored(int(version), int(source))

    def rollback_failed(self, version: int, text: str) -> None:
        """Never go on learning on a bad version unasked: pause for the operator."""
        with self.lock:
            self.paused = True
        self.port.log("error", f"regression guard: rollback to v{version} failed ({text}); "
                      "learning paused for the operator")

    # ----- the machine -----
    def step(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            if self.state == IDLE:
                self.maybe_start_group()
            elif self.state == RESETTING:
                if self.cfg.reset_mode == "operator" and self.ep.scene_ready:
                    self.begin_running(now)
            elif self.state == RUNNING:
                self.poll_running(now)
            elif self.state == WAITING_FOR_UPDATE:
                if self.version != self.group_version or \
                        now - self.waiting_since > self.cfg.wait_for_update_s:
                    self.set_state(IDLE)

    def maybe_start_group(self) -> None:
        if not self.start_requested or self.version is None or self.paused:
            return
        self.group_version = v = self.version
        eval_ids = list(self.cfg.eval_init_state_ids)
        due = v != self.last_eval_version and v % self.cfg.eval_every == 0 \
            and self.guard.needs_evaluation(v)
        if eval_ids != [-1] and (due or self.eval_requested):
            self.last_eval_version, self.eval_requested = v, False
            self.eval_from = len(self.history[v]["eval"])
            self.begin_group(f"eval-{self.cfg.task}-v{v:04d}-{uuid.uuid4().hex[:4]}", -1,
                             [(i, True) for i in eval_ids])
            return
        if self.cfg.num_groups and self.groups_done >= self.cfg.num_groups:
            return
        G = self.cfg.group_size
        resumed = self.resumable_group()
        if resumed:
            gid, init_id, n = resumed
            self.port.log("info", f"resuming group {gid} ({n}/{G} stored)")
            self.begin_group(gid, init_id, [(init_id, False)] * (G - n), n)
            return
        init_id = pick_init_states(list(self.cfg.init_state_ids), self.latest,
                                   self.cfg.init_state_sampling, self.rng)[0]
        gid = f"{self.robot}-{self.cfg.task}-v{v:04d}-s{init_id:05d}-{uuid.uuid4().hex[:6]}"
        self.begin_group(gid, init_id, [(init_id, False)] * G)

    def resumable_group(self) -> tuple[str, int, int] | None:
        for gid, meta, n in reversed(self.store.group_summaries(self.cfg.task,
                                                                self.robot + "-")):
            if meta["adapter_version"] == self.version and n < self.cfg.group_size:
                return gid, int(meta["init_state_id"]), n
        return None

    def completed_groups(self) -> list[tuple[int, list[bool]]]:
        """(init id, successes) of this robot's complete explore groups, oldest first
        (evaluation groups are named eval-..., not after the robot)."""
        done = []
        for gid, _, n in self.store.group_summaries(self.cfg.task, self.robot + "-"):
            if n >= self.cfg.group_size:
                eps = self.store.read_group(self.cfg.task, gid, with_tensors=False)
                if eps:                        # bad episodes are quarantined and left out
                    done.append((eps[0].init_state_id, [e.success for e in eps]))
        return done

    def begin_group(self, gid: str, init_id: int, queue, done: int = 0) -> None:
        self.group_id, self.group_index = gid, done
        self.ep = Episode(init_state_id=max(init_id, 0))
        self.queue = list(queue)
        self.next_episode()

    def next_episode(self) -> None:
        if not self.queue:
            self.finish_group()
            return
        init_id, det = self.queue[0]
        self.ep = Episode(init_state_id=init_id, deterministic=det)
        self.set_state(RESETTING)
        if self.cfg.reset_mode == "service":
            self.port.request_reset(init_id)

    def begin_running(self, now: float) -> None:
        self.ep.episode_id, self.ep.started_at = f"ep-{uuid.uuid4().hex[:10]}", now
        self.set_state(RUNNING)

    def poll_running(self, now: float) -> None:
        if self.ep.mark is not None:
            outcome, source = self.ep.mark
            if outcome == "discard":
                self.port.log("info", f"episode {self.ep.episode_id} discarded by {source}")
                self.set_state(STORING)
                self.next_episode()
                return
            self.end_episode(outcome == "success", "operator", now)
        elif self.ep.sim_success and self.cfg.reset_mode == "service":
            self.end_episode(True, "simulator", now)
        elif now - self.ep.started_at > self.cfg.max_episode_s or \
                len(self.ep.frames) + len(self.ep.op_frames) >= self.cfg.max_chunks:
            self.end_episode(False, "timeout", now)

    def end_episode(self, success: bool, decided_by: str, now: float) -> None:
        self.set_state(STORING)
        ep, duration = self.ep, now - self.ep.started_at
        if not ep.frames or len(ep.versions) != 1:
            why = "no chunks" if not ep.frames else f"chunks from several versions {ep.versions}"
            self.port.log("warning", f"episode {ep.episode_id} not stored: {why}; running it "
                          "again")
            self.next_episode()
            return
        (adapter, version), = ep.versions
        outcome = {"episode_id": ep.episode_id, "group_id": self.group_id,
                   "task": self.cfg.task, "init_state_id": max(ep.init_state_id, 0),
                   "adapter_name": adapter, "adapter_version": version}
        corrected = sum(int(f["executed"]) for f in ep.op_frames)
        steps = corrected + sum(int(f["executed"]) for f in ep.frames)
        if not ep.deterministic:
            try:
                rec = episode_record(ep.frames, success=success, instruction=ep.instruction,
                                     decided_by=decided_by, duration_s=duration,
                                     corrections=operator_chunks(ep.op_frames),
                                     corrected_steps=corrected, **outcome)
                self.store.write_episode(rec)
            except (StoreError, RuntimeError, ValueError) as e:   # disk, or frames that differ
                self.port.log("error", f"episode {ep.episode_id} not stored ({e}); it is "
                              "discarded and run again")
                self.next_episode()
                return
        self.port.publish_outcome(outcome | {"success": success, "decided_by": decided_by,
                                             "duration_s": duration,
                                             "chunk_count": len(ep.frames),
                                             "reward": outcome_reward(success, corrected),
                                             "corrected_steps": corrected, "step_count": steps})
        self.history[version]["eval" if ep.deterministic else "explore"].append(success)
        self.history[version]["steps"][0] += corrected
        self.history[version]["steps"][1] += steps
        self.port.log("info", f"{'eval ' if ep.deterministic else ''}episode {ep.episode_id} "
                      f"v{version} init {ep.init_state_id}: "
                      f"{'success' if success else 'failure'} ({decided_by}, "
                      f"{len(ep.frames)} chunks, {duration:.1f} s)")
        self.queue.pop(0)
        self.group_index += 1
        self.next_episode()

    def finish_group(self) -> None:
        gid = self.group_id
        if gid.startswith("eval-"):
            self.set_state(IDLE)
            self.guard_check(self.group_version)
            return
        eps = self.store.read_group(self.cfg.task, gid, with_tensors=False)
        if not eps:
            self.port.log("error", f"group {gid}: no readable episode (quarantined); skipped")
            self.set_state(IDLE)
            return
        self.port.publish_group({"group_id": gid, "task": self.cfg.task,
                                 "init_state_id": eps[0].init_state_id,
                                 "adapter_name": eps[0].adapter_name,
                                 "adapter_version": eps[0].adapter_version,
                                 "episode_paths": [str(e.path) for e in eps],
                                 "rewards": [e.reward for e in eps]})
        self.groups_done += 1
        self.latest.update(latest_groups([(eps[0].init_state_id, [e.success for e in eps])]))
        self.port.log("info", f"group {gid} ready: {sum(e.success for e in eps)}/{len(eps)} "
                      "successes")
        if len({e.reward for e in eps}) == 1:
            self.set_state(IDLE)               # no signal: the learner will not update
            return
        self.waiting_since = time.monotonic()
        self.set_state(WAITING_FOR_UPDATE)

    def guard_check(self, version: int) -> None:
        """After an evaluation group: keep the version or ask the node to roll it back."""
        results = self.history[version]["eval"][self.eval_from:]
        d = self.guard.record(version, sum(results), len(results))
        if d.rollback_to is None:
            self.port.log("info", f"regression guard: {d.reason}")
            return
        self.port.log("error", f"regression guard: rolling back v{version} to "
                      f"v{d.rollback_to}: {d.reason}")
        self.waiting_since, self.group_version = time.monotonic(), version
        self.set_state(WAITING_FOR_UPDATE)     # no group runs on the bad version
        self.port.request_rollback(d.rollback_to)

    def set_state(self, state: int) -> None:
        self.state = state
        self.port.publish_state()

    def waiting_for(self) -> str:
        """What keeps the next episode from running ("" when one runs or is about to)."""
        with self.lock:
            if self.version is None:
                return "policy_node's active adapter version (is policy_node running?)"
            if self.paused:
                return "the operator to resume learning (paused)"
            if not self.start_requested:
                return "the operator's start"
            if self.state == RESETTING and self.cfg.reset_mode == "operator":
                return "the operator's scene_ready (reset the scene, then press Scene ready)"
            if self.state == RESETTING:
                return "the simulator's reset_scene service"
            if self.state == WAITING_FOR_UPDATE:
                return "the learner's next adapter version"
            if self.state == IDLE and self.cfg.num_groups and \
                    self.groups_done >= self.cfg.num_groups:
                return "nothing: all num_groups groups are done"
            return ""

    def snapshot(self) -> dict:
        """What the operator's panel shows."""
        rate = lambda xs: (sum(xs) / len(xs)) if xs else None  # noqa: E731
        with self.lock:
            return {
                "task": self.cfg.task, "state": STATE_NAMES[self.state],
                "episode_id": self.ep.episode_id if self.state == RUNNING else "",
                "episode_marked": self.ep.mark is not None,
                "chunks": len(self.ep.frames) + len(self.ep.op_frames),
                "group_id": self.group_id, "group_index": self.group_index,
                "group_size": self.cfg.group_size, "adapter": self.cfg.task,
                "version": self.version, "paused": self.paused,
                "waiting_for_operator_reset": self.state == RESETTING
                and self.cfg.reset_mode == "operator",
                "marks_accepted": self.marks["accepted"],
                "marks_refused": self.marks["refused"],
                "versions": [{"version": v, "explore_episodes": len(h["explore"]),
                              "explore_success": rate(h["explore"]),
                              "eval_episodes": len(h["eval"]),
                              "eval_success": rate(h["eval"]),
                              "corrected_share": h["steps"][0] / h["steps"][1]
                              if h["steps"][1] else None}
                             for v, h in sorted(self.history.items())],
                "guard": [{"version": e.version, "rollback_to": e.rollback_to,
                           "reason": e.reason} for e in self.guard.events[-5:]]}
