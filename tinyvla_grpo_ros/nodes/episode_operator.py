"""What the operator (and the regression guard) can do to a running episode manager.

A mixin of EpisodeManagerNode: the ROS services (mark_outcome, scene_ready, start, pause_learning,
rollback_adapter, evaluate_now), the Joy input and the web panel (panel_server.py) all call these
methods, so every input path is checked the same way (one mark per episode, no mark before the
first chunk, ...). The guard's decision logic is core/regression_guard.py; here it is carried out.
"""
from __future__ import annotations

import threading
import time

import cv2
from sensor_msgs.msg import Joy
from std_srvs.srv import SetBool
from tinyvla_grpo_interfaces.msg import EpisodeState
from tinyvla_grpo_interfaces.srv import MarkOutcome, SelectAdapter, StartEpisode

from .ros_common import BadImage, image_to_numpy

OUTCOMES = {"success": MarkOutcome.Request.SUCCESS, "failure": MarkOutcome.Request.FAILURE,
            "discard": MarkOutcome.Request.DISCARD}
STATE_NAMES = {EpisodeState.IDLE: "IDLE", EpisodeState.RESETTING: "RESETTING",
               EpisodeState.RUNNING: "RUNNING", EpisodeState.STORING: "STORING",
               EpisodeState.WAITING_FOR_UPDATE: "WAITING_FOR_UPDATE"}


class OperatorActions:
    """Needs the node's state: state, mark, chunks, marks, mark_lock, history, guard, clients."""

    def mark_episode(self, episode_id: str, outcome: str | int, source: str) -> tuple[bool, str]:
        """Mark the running episode once; every further mark of it is refused (double click)."""
        code = OUTCOMES.get(outcome, outcome) if isinstance(outcome, str) else outcome
        if code not in OUTCOMES.values():
            return False, f"unknown outcome {outcome!r}; use success, failure or discard"
        with self.mark_lock:
            running = self.state.state == EpisodeState.RUNNING
            ep = episode_id or self.state.episode_id
            if not running or ep != self.state.episode_id:
                ok, msg = False, f"episode {ep or '(none)'} is not running (marked or ended)"
            elif self.mark is not None:
                ok, msg = False, f"episode {ep} is already marked"
            elif not self.chunks:
                ok, msg = False, f"episode {ep} has no action chunk yet: nothing to mark"
            else:
                self.mark = (code, source)
                ok, msg = True, f"episode {ep} marked {outcome} ({source})"
            self.marks["accepted" if ok else "refused"] += 1
        return ok, msg

    def on_mark(self, req: MarkOutcome.Request, resp: MarkOutcome.Response):
        resp.accepted, resp.message = self.mark_episode(req.episode_id, req.outcome, "service")
        return resp

    def scene_is_ready(self) -> tuple[bool, str]:
        if self.state.state != EpisodeState.RESETTING or self.reset_mode != "operator":
            return False, "not waiting for a scene reset"
        self.scene_ready = True
        return True, "starting the episode"

    def on_scene_ready(self, req, resp):
        resp.success, resp.message = self.scene_is_ready()
        return resp

    def set_paused(self, paused: bool) -> tuple[bool, str]:
        self.paused = paused
        return True, ("learning paused: no new group starts" if paused else "learning resumed")

    def on_pause(self, req: SetBool.Request, resp: SetBool.Response):
        resp.success, resp.message = self.set_paused(bool(req.data))
        return resp

    def rollback(self, version: int) -> tuple[bool, str]:
        """Learning goes on from stored `version` (learner_node's restore_adapter); with no
        learner (deployment), policy_node's select_adapter makes it active."""
        req = SelectAdapter.Request(adapter_name=self.task, version=int(version))
        for client, who in ((self.restore_client, "learner_node"),
                            (self.select_client, "policy_node")):
            if not client.wait_for_service(timeout_sec=2.0):
                continue
            done = threading.Event()
            fut = client.call_async(req)
            fut.add_done_callback(lambda _, d=done: d.set())
            if not done.wait(30.0) or fut.result() is None:
                return False, f"{who} did not answer"
            r = fut.result()
            return bool(r.accepted), r.message
        return False, "neither learner_node's restore nor policy_node's select service answers"

    def on_select(self, req: SelectAdapter.Request, resp: SelectAdapter.Response):
        resp.accepted, resp.message = self.rollback(req.version)
        resp.active_version = self.version or 0
        return resp

    def on_evaluate_now(self, req, resp):
        if self.eval_ids == [-1]:
            resp.success, resp.message = False, "no eval_init_state_ids configured"
            return resp
        self.eval_requested = True
        resp.success, resp.message = True, "the next group evaluates the active version"
        return resp

    def guard_check(self, version: int) -> None:
        """After an evaluation group: keep the version or roll it back."""
        results = self.history[version]["eval"][self.eval_from:]
        d = self.guard.record(version, sum(results), len(results))
        if d.rollback_to is None:
            self.get_logger().info(f"regression guard: {d.reason}")
            return
        self.get_logger().error(f"regression guard: rolling back v{version} to "
                                f"v{d.rollback_to}: {d.reason}")
        self.waiting_since, self.group_version = time.monotonic(), version
        self.set_state(EpisodeState.WAITING_FOR_UPDATE)    # no group runs on the bad version

        def carry_out() -> None:
            ok, text = self.rollback(d.rollback_to)
            if ok:
                self.get_logger().warning(f"regression guard: rollback to v{d.rollback_to}: "
                                          f"{text}")
                return
            self.paused = True              # never go on learning on the bad version unasked
            self.get_logger().error(f"regression guard: rollback to v{d.rollback_to} failed "
                                    f"({text}); learning paused for the operator")
        threading.Thread(target=carry_out, name="guard_rollback", daemon=True).start()

    def on_joy(self, msg: Joy) -> None:
        for action in self.joy.update(list(msg.buttons), time.monotonic()):
            ok, text = (self.scene_is_ready() if action == "ready"
                        else self.mark_episode("", action, "joy"))
            self.get_logger().info(f"joy {action}: {text}")

    def thumbnail_png(self) -> bytes | None:
        msg = self.last_image
        if msg is None:
            return None
        try:
            img = image_to_numpy(msg)
        except BadImage:
            return None
        scale = max(1, 192 // max(img.shape[:2]))
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        ok, png = cv2.imencode(".png", img[..., ::-1])
        return png.tobytes() if ok else None

    def snapshot(self) -> dict:
        s = self.state
        rate = lambda xs: (sum(xs) / len(xs)) if xs else None  # noqa: E731
        return {
            "task": self.task, "state": STATE_NAMES.get(s.state, str(s.state)),
            "episode_id": s.episode_id if s.state == EpisodeState.RUNNING else "",
            "episode_marked": self.mark is not None, "chunks": len(self.chunks),
            "group_id": s.group_id,
            "group_index": int(s.group_index), "group_size": self.G,
            "adapter": self.task, "version": self.version, "paused": self.paused,
            "waiting_for_operator_reset": s.state == EpisodeState.RESETTING
            and self.reset_mode == "operator",
            "marks_accepted": self.marks["accepted"], "marks_refused": self.marks["refused"],
            "versions": [{"version": v, "explore_episodes": len(h["explore"]),
                          "explore_success": rate(h["explore"]),
                          "eval_episodes": len(h["eval"]), "eval_success": rate(h["eval"])}
                         for v, h in sorted(self.history.items())],
            "guard": [{"version": e.version, "rollback_to": e.rollback_to, "reason": e.reason}
                      for e in self.guard.events[-5:]],
            "learner": self.learner_status}

    def on_start(self, req: StartEpisode.Request, resp: StartEpisode.Response):
        self.start_requested = True
        resp.accepted, resp.message = True, "groups will run"
        resp.group_id = self.state.group_id
        return resp
