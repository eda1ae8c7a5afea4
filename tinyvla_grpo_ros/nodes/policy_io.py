"""policy_node's conversions: messages in -> an observation, a chunk -> messages out.

No state here: policy_node keeps the latest messages and calls these functions.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..core.sampler import Chunk, DiffusionSampler
from .ros_common import BadImage, image_to_numpy


def observation(images: dict[str, Image], cameras: list[str], joints: JointState | None,
                joint_names: list[str], now: Time, stale_after_s: float):
    """(images (Nc, H, W, 3), state (Ds,), oldest stamp, the image messages used) or a string
    naming the problem. The chunk must carry exactly these messages: a newer frame arriving
    during inference would make the stored observation differ from the one sampled from."""
    imgs, stamps, used = [], [], []
    for topic in cameras:
        msg = images.get(topic)
        if msg is None:
            return f"no image yet on {topic}"
        used.append(msg)
        try:
            imgs.append(image_to_numpy(msg))
        except BadImage as e:
            return f"bad image on {topic}: {e}"
        stamps.append(Time.from_msg(msg.header.stamp))
    if len({i.shape for i in imgs}) > 1:
        return f"cameras disagree on image size: {[i.shape for i in imgs]}"
    if joints is None:
        return "no joint_states yet"
    pos = dict(zip(joints.name, joints.position))
    missing = [j for j in joint_names if j not in pos]
    if missing:
        return f"joint_states lacks {missing}"
    state = np.array([pos[j] for j in joint_names], np.float64)
    if not np.all(np.isfinite(state)):
        return f"non-finite joint positions {state.tolist()}"
    stamps.append(Time.from_msg(joints.header.stamp))
    oldest = min(stamps, key=lambda t: t.nanoseconds)
    age = (now - oldest).nanoseconds * 1e-9
    if age > stale_after_s:
        return f"stale inputs: oldest is {age:.2f} s old"
    return np.stack(imgs), state, oldest, used


def chunk_message(chunk: Chunk, actions: np.ndarray, sampler: DiffusionSampler, adapter: str,
                  version: int, episode: EpisodeState, chunk_index: int, obs, cameras: list[str],
                  joint_names: list[str], action_names: list[str], instruction: str
                  ) -> ActionChunk:
    """The executed chunk with everything GRPO needs to re-score it (B = 1)."""
    images, state, oldest, used = obs
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


def trajectory(action_names: list[str], actions: np.ndarray, control_dt: float
               ) -> JointTrajectory:
    """(T, Da) positions -> a JointTrajectory with one point every control_dt."""
    traj = JointTrajectory(joint_names=action_names)
    for i, a in enumerate(actions):
        t = (i + 1) * control_dt
        traj.points.append(JointTrajectoryPoint(
            positions=a.tolist(), time_from_start=Duration(sec=int(t),
                                                           nanosec=int((t % 1) * 1e9))))
    return traj


def waiting_for(images: dict[str, Image], cameras: list[str], joints: JointState | None,
                joint_names: list[str]) -> str:
    """The inputs that have never arrived ("" once every camera and joint has been seen)."""
    missing = [f"camera frames on {t}" for t in cameras if t not in images]
    if joints is None:
        missing.append("joint_states")
    else:
        lacking = [j for j in joint_names if j not in joints.name]
        if lacking:
            missing.append(f"joint_states with {lacking}")
    return ", ".join(missing)


def hold_trajectory(joints: JointState | None, action_names: list[str], control_dt: float
                    ) -> JointTrajectory | None:
    """Hold the arm at its current joint positions (None when they are not all known)."""
    if joints is None:
        return None
    pos = dict(zip(joints.name, joints.position))
    if not all(n in pos for n in action_names):
        return None
    return trajectory(action_names, np.array([[pos[n] for n in action_names]]), control_dt)
