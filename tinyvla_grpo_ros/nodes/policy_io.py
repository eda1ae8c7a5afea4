"""policy_node's conversions: messages in -> an observation, a chunk -> messages out.

`Inputs` keeps the latest camera frames and joint readings (and, for a policy with observation
history, the episode's recent ones); the functions build messages.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..core.config import ModelConfig, PolicyNodeConfig
from ..core.inputs import Freshness, JointTable, fit_image, image_prep
from ..core.observation_history import StampedHistory, history_steps
from ..core.safety import ActionLimits
from ..core.sampler import Chunk, DiffusionSampler
from .ros_common import BadImage, image_to_numpy, numpy_to_image


class DecisionObservation(NamedTuple):
    images: np.ndarray        # (To * Nc, S, S, 3) fitted frames, oldest step first
    state: np.ndarray         # (To * Ds,) joint positions, oldest step first
    oldest: Time              # the oldest stamp of the current step's inputs
    used: list[Image]         # the fitted frames as messages, in `images` order
    current: np.ndarray       # (Ds,) the current step's joint positions


class Inputs:
    """The latest camera frames and joint readings, and the observation a decision may use.

    Frames keep their arrival time; joints are merged by name across publishers
    (core/inputs.JointTable). `observation()` fits every frame to the model's input size
    (crop or pad to a square, as the SFT data; core/inputs.fit_image) and hands back new Image
    messages of those frames: what the model saw is what the chunk carries and the store
    keeps, whatever the camera's resolution. With n_obs_steps To > 1 every frame and complete
    joint reading of the episode is kept by stamp (core/observation_history.py) and a decision
    takes the To steps one control period (1 / control_rate_hz) apart."""

    def __init__(self, cameras: list[str], joint_names: list[str], fresh: Freshness,
                 size: int, fit: str, tasks: list[str], limits: ActionLimits,
                 action_names: list[str], model_cfg: ModelConfig | None = None,
                 node_cfg: PolicyNodeConfig | None = None) -> None:
        """model_cfg: how frames are prepared and how many observation steps are kept (None:
        the package's own, one step); node_cfg: the control period, history gap and decision
        period (None: the defaults)."""
        n_obs_steps = model_cfg.n_obs_steps if model_cfg is not None else 1
        self.prep = image_prep(model_cfg) if model_cfg is not None else {}
        node_cfg = node_cfg or PolicyNodeConfig()
        if n_obs_steps > 1 and node_cfg.decision_period_s == 0:
            raise ValueError(f"the policy conditions on {n_obs_steps} observation steps, one "
                             "control period apart: it needs frames stamped as they were taken "
                             "and decisions on a clock (decision_period_s -1 or > 0), not one "
                             "frame per decision (decision_period_s 0)")
        self.cameras, self.joint_names, self.fresh = cameras, joint_names, fresh
        self.size, self.fit, self.tasks = size, fit, tasks
        self.limits, self.action_names = limits, action_names
        self.images: dict[str, tuple[Image, float]] = {}      # topic -> (message, arrival)
        self.joints = JointTable()
        self.last_good: np.ndarray | None = None              # joint state of the last decision
        self.joint_problem = ""                               # the last JointState's, if bad
        self.n_obs, self.dt = n_obs_steps, 1.0 / node_cfg.control_rate_hz
        self.gap = node_cfg.history_gap_s
        span = (n_obs_steps - 1) * self.dt
        self.history = {k: StampedHistory(span) for k in [*cameras, "joint_states"]} \
            if n_obs_steps > 1 else {}

    def on_image(self, topic: str, msg: Image, arrival: float) -> None:
        self.images[topic] = (msg, arrival)
        if self.history:
            self.history[topic].add(Time.from_msg(msg.header.stamp).nanoseconds * 1e-9, msg)

    def on_joints(self, msg: JointState, arrival: float) -> None:
        """Take a JointState; a malformed one is left out and named by the next decision."""
        stamp = Time.from_msg(msg.header.stamp).nanoseconds * 1e-9
        self.joint_problem = self.joints.update(msg.name, msg.position, stamp, arrival)
        if self.history and not self.joint_problem and all(
                j in self.joints.joints for j in self.joint_names):
            self.history["joint_states"].add(stamp, np.array(
                [self.joints.joints[j][0] for j in self.joint_names]))

    def restart_history(self) -> None:
        """An episode starts: its history begins with the newest inputs."""
        for h in self.history.values():
            h.restart()

    def waiting_for(self) -> str:
        """The inputs that have never arrived ("" once every camera and joint has been seen)."""
        missing = [f"camera frames on {t}" for t in self.cameras if t not in self.images]
        lacking = [j for j in self.joint_names if j not in self.joints.joints]
        if lacking:
            missing.append("joint_states" if not self.joints.joints
                           else f"joint_states with {lacking}")
        return ", ".join(missing)

    def for_decision(self, task: str, now: Time, now_arrival: float):
        """The observation of a decision on `task`, or why there is none: a task the policy
        does not serve, a missing, stale, future or bad input, or a joint reading outside the
        action limits. Keeps the last good reading (in action order) for the hold."""
        if task and task not in self.tasks:
            return (f"episode for task {task!r}, which this policy does not serve (it serves "
                    f"{self.tasks})")
        obs = self.joint_problem or self.observation(now, now_arrival)
        if isinstance(obs, str):
            return obs
        state = obs.current
        problem = self.limits.reading_problem(self.action_names, self.joint_names, state)
        if problem:
            return problem
        if set(self.action_names) <= set(self.joint_names):
            pos = dict(zip(self.joint_names, state))
            self.last_good = np.array([pos[n] for n in self.action_names])
        return obs

    def observation(self, now: Time, now_arrival: float) -> DecisionObservation | str:
        """The observation of the current inputs (and their history), or a string naming the
        problem."""
        now_s = now.nanoseconds * 1e-9
        imgs, stamps, used = [], [], []
        for topic in self.cameras:
            if topic not in self.images:
                return f"no image yet on {topic}"
            msg, arrival = self.images[topic]
            stamp = Time.from_msg(msg.header.stamp).nanoseconds * 1e-9
            problem = self.fresh.problem(f"camera {topic}", stamp, arrival, now_s, now_arrival)
            if problem:
                return problem
            try:
                img = fit_image(image_to_numpy(msg), self.size, self.fit, **self.prep)
            except BadImage as e:
                return f"bad image on {topic}: {e}"
            imgs.append(img)
            stamps.append(stamp)
            used.append(numpy_to_image(img, msg.header.stamp, msg.header.frame_id))
        joints = self.joints.read(self.joint_names, self.fresh, now_s, now_arrival)
        if isinstance(joints, str):
            return joints
        state, joint_stamp = joints
        oldest = Time(nanoseconds=int(min(stamps + [joint_stamp]) * 1e9))
        if not self.history:
            return DecisionObservation(np.stack(imgs), state, oldest, used, state)
        return self.with_history(DecisionObservation(np.stack(imgs), state, oldest, used, state))

    def with_history(self, now: DecisionObservation) -> DecisionObservation | str:
        """The current step's observation `now` preceded by the To - 1 earlier steps of every
        camera and of the joints (the readings their histories hold nearest to each step)."""
        steps = {}
        for key, h in self.history.items():
            what = "joint_states" if key == "joint_states" else f"camera {key}"
            got = history_steps(h, self.n_obs, self.dt, self.gap, what)
            if isinstance(got, str):
                return got
            steps[key] = got
        frames, used = [], []
        for k in range(self.n_obs - 1):                    # the earlier steps, oldest first
            for topic in self.cameras:
                msg = steps[topic][k]
                try:
                    img = fit_image(image_to_numpy(msg), self.size, self.fit, **self.prep)
                except BadImage as e:
                    return f"bad image on {topic}: {e}"
                frames.append(img)
                used.append(numpy_to_image(img, msg.header.stamp, msg.header.frame_id))
        states = np.concatenate(steps["joint_states"][:-1] + [now.state])
        if not np.all(np.isfinite(states)):
            return f"non-finite joint positions in the observation history {states.tolist()}"
        return DecisionObservation(np.concatenate([np.stack(frames), now.images]), states,
                                   now.oldest, used + now.used, now.state)


def chunk_message(chunk: Chunk, actions: np.ndarray, sampler: DiffusionSampler, adapter: str,
                  version: int, episode: EpisodeState, chunk_index: int, obs, cameras: list[str],
                  joint_names: list[str], action_names: list[str], instruction: str
                  ) -> ActionChunk:
    """The executed chunk with everything GRPO needs to re-score it (B = 1)."""
    _, state, oldest, used, _ = obs
    scfg, idx = sampler.cfg, sampler.stochastic_indices
    return ActionChunk(
        episode_id=episode.episode_id, chunk_index=chunk_index, task_id=episode.task_id,
        adapter_name=adapter, adapter_version=version, action_names=action_names,
        horizon=actions.shape[0], action_dim=actions.shape[1],
        actions=actions.astype(np.float32).ravel().tolist(),
        executed_steps=sampler.executed_steps(), scheduler=scfg.scheduler,
        num_inference_steps=scfg.num_inference_steps,
        step_timesteps=sampler.timesteps[idx].tolist(),
        prev_timesteps=sampler.prev_timesteps[idx].tolist(),
        chain=chunk.chain[0].numpy().ravel().tolist(),
        log_probs=chunk.log_probs[0].numpy().tolist(), eta=scfg.eta,
        min_sampling_std=scfg.min_sampling_std, min_logprob_std=scfg.min_logprob_std,
        noise_clip=scfg.noise_clip, observation_stamp=oldest.to_msg(), images=used,
        camera_names=cameras, joint_names=joint_names, joint_positions=state.tolist(),
        instruction=instruction)


def hold_chunk(action_names: list[str]) -> ActionChunk:
    """An empty chunk: the simulator (chunk mode) holds the arm where it is."""
    return ActionChunk(action_names=action_names, horizon=0, action_dim=len(action_names),
                       executed_steps=0)


def trajectory(action_names: list[str], actions: np.ndarray, control_dt: float,
               start=None) -> JointTrajectory:
    """(T, Da) positions -> a JointTrajectory with one point every control_dt, starting at the
    stamp `start` (builtin_interfaces/Time; None: when the controller receives it)."""
    traj = JointTrajectory(joint_names=action_names)
    if start is not None:
        traj.header.stamp = start
    for i, a in enumerate(actions):
        t = (i + 1) * control_dt
        traj.points.append(JointTrajectoryPoint(
            positions=a.tolist(), time_from_start=Duration(sec=int(t),
                                                           nanosec=int((t % 1) * 1e9))))
    return traj



def hold_trajectory(target: np.ndarray | None, action_names: list[str], control_dt: float
                    ) -> JointTrajectory | None:
    """Hold the arm at `target` (ActionLimits.hold_target); None when there is none."""
    if target is None:
        return None
    return trajectory(action_names, np.asarray(target, float)[None], control_dt)


def diagnostics(node, waiting: str):
    """policy_node's /diagnostics: its counters, timing, control and adapter; its problems."""
    from .ros_common import diagnostics as status
    adapter, version = node.runtime.active
    values = node.stats | node.operator.stats | node.gc.values() | {
        "rejected": node.swaps.rejected, "late": node.schedule.late,
        "late_ms_max": round(node.schedule.late_s_max * 1e3, 1),
        "control": "operator" if node.operator.active else "policy",
        "inference_queue": node.worker._work_queue.qsize(),
        "loader_queue": node.swaps.loader._work_queue.qsize(),
        "adapter": adapter, "version": version}
    problems = [p for p in (node.problem, node.swaps.problem, node.operator.problem) if p]
    return status("policy_node", problems + ([f"waiting for {waiting}"] if waiting else []),
                  values, node.get_clock().now().to_msg())
