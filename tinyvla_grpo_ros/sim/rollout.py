"""Episodes in a MetaWorldScene without ROS: scripted demonstrations and policy rollouts.

Used to build the SFT starting point (record demos, measure its success) and by benchmarks that
need many episodes fast. The ROS loop (sim_node + policy_node + episode_manager_node) runs the same
scene over topics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.demos import Demonstration, save_demo
from ..core.model import Observation, TinyVLAPolicy
from ..core.sampler import Chunk, DiffusionSampler
from .metaworld_scene import MetaWorldScene, expert_policy


def scene_observation(scene: MetaWorldScene) -> Observation:
    img = torch.from_numpy(scene.render())[None, None]                 # (1, 1, H, W, 3)
    state = torch.from_numpy(scene.joint_positions()).float()[None]    # (1, Ds)
    return Observation(img, state, [scene.instruction])


def record_expert_demos(task: str, n: int, out_dir: Path, image_size: int = 64,
                        decision_every: int = 4, first_init_id: int = 0,
                        max_steps: int = 150, **scene_kw) -> list[Path]:
    """Record `n` scripted-expert episodes (frames at decision points only)."""
    scene = MetaWorldScene(task, image_size=image_size, max_steps=max_steps, **scene_kw)
    expert = expert_policy(task)
    paths = []
    for k in range(n):
        init_id = first_init_id + k
        scene.reset(init_id)
        frames, frame_steps, states, actions = [], [], [], []
        while True:
            if scene.steps % decision_every == 0:
                frames.append(scene.render())
                frame_steps.append(scene.steps)
            states.append(scene.joint_positions())
            a = scene.expert_action(expert)
            actions.append(np.clip(a, -1, 1))
            if scene.step(a).done:
                break
        demo = Demonstration(torch.from_numpy(np.stack(frames))[:, None],
                             torch.from_numpy(np.stack(states)).float(),
                             torch.from_numpy(np.stack(actions)).float(), scene.instruction,
                             task=task, success=scene.success,
                             frame_steps=torch.tensor(frame_steps))
        paths.append(save_demo(out_dir, f"{task}-{init_id:05d}", demo))
    scene.close()
    return paths


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    chunks: list[tuple[Observation, Chunk]] = field(default_factory=list)


@torch.no_grad()
def run_policy_episode(scene: MetaWorldScene, model: TinyVLAPolicy, sampler: DiffusionSampler,
                       init_state_id: int, deterministic: bool,
                       generator: torch.Generator | None = None,
                       keep_chunks: bool = False) -> EpisodeResult:
    scene.reset(init_state_id)
    res = EpisodeResult(False, 0)
    n_exec = sampler.executed_steps()
    while True:
        obs = scene_observation(scene)
        chunk = sampler.sample(model, obs, generator, deterministic=deterministic)
        if keep_chunks:
            res.chunks.append((obs, chunk))
        for a in chunk.actions[0, :n_exec].numpy():
            r = scene.step(a)
            if r.done:
                res.success, res.steps = r.success, r.steps
                return res


def success_rate(task: str, model: TinyVLAPolicy, sampler: DiffusionSampler,
                 init_ids: list[int], image_size: int, deterministic: bool = True,
                 seed: int = 0, max_steps: int = 150, **scene_kw) -> float:
    scene = MetaWorldScene(task, image_size=image_size, max_steps=max_steps, **scene_kw)
    gen = torch.Generator().manual_seed(seed)
    wins = [run_policy_episode(scene, model, sampler, i, deterministic, gen).success
            for i in init_ids]
    scene.close()
    return float(np.mean(wins))
