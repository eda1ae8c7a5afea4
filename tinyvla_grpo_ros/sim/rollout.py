"""Episodes in a MetaWorldScene without ROS: scripted demonstrations and policy rollouts.

Used to build the SFT starting point (record demos, measure its success) and by the learning
bench, which needs many episodes fast (`run_lockstep`, the one policy rollout loop outside ROS).
The ROS loop (sim_node + policy_node + episode_manager_node) runs the same scene over topics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.demos import Demonstration, save_demo
from ..core.model import Observation, TinyVLAPolicy
from ..core.sampler import DiffusionSampler, paired_init_noise
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
class LockstepEpisode:
    init_state_id: int
    success: bool = False
    steps: int = 0
    frames: list[dict[str, torch.Tensor]] = field(default_factory=list)   # recorded chunks


@torch.no_grad()
def run_lockstep(scenes: list[MetaWorldScene], model: TinyVLAPolicy, sampler: DiffusionSampler,
                 init_ids: list[int], deterministic: bool, generator: torch.Generator,
                 record: bool = False, noise_key: int | None = None) -> list[LockstepEpisode]:
    """One episode per init id, scene i running init_ids[i], with one batched sampler call per
    decision point for all episodes still running (the model runs once, not len(init_ids) times).

    record=True keeps, per decision, what GRPO needs: the observation, the chain and its
    log-probs (`frames`, turned into an EpisodeRecord by core.rollout_store.episode_record).

    noise_key = k: the x_K of the episode of init id i at decision index d is drawn from its own
    generator, seeded by (k, i, d) (`core.sampler.paired_init_noise`). The draw then belongs to
    the state and the decision, not to the batch: two evaluations with the same key meet the same
    x_K in every state at every decision, whichever other episodes ran beside them or ended
    earlier. Without it, x_K comes from `generator` for the episodes still running."""
    if len(init_ids) > len(scenes):
        raise ValueError(f"{len(init_ids)} episodes need as many scenes, have {len(scenes)}")
    eps = [LockstepEpisode(i) for i in init_ids]
    for scene, i in zip(scenes, init_ids):
        scene.reset(i)
    active = list(range(len(init_ids)))
    n_exec = sampler.executed_steps()
    decision = 0
    while active:
        parts = [scene_observation(scenes[k]) for k in active]
        obs = Observation(torch.cat([p.images for p in parts]),
                          torch.cat([p.state for p in parts]),
                          [s for p in parts for s in p.instruction])
        init_noise = None
        if noise_key is not None:
            init_noise = paired_init_noise(noise_key, [init_ids[k] for k in active], decision,
                                           (model.config.horizon, model.config.action_dim))
        decision += 1
        chunk = sampler.sample(model, obs, generator, deterministic=deterministic,
                               init_noise=init_noise)
        if record:
            for row, k in enumerate(active):
                eps[k].frames.append({
                    "images": obs.images[row], "states": obs.state[row],
                    "chains": chunk.chain[row], "log_probs": chunk.log_probs[row],
                    "executed": n_exec})
        still = []
        for row, k in enumerate(active):
            for a in chunk.actions[row, :n_exec].numpy():
                r = scenes[k].step(a)
                if r.done:
                    eps[k].success, eps[k].steps = r.success, r.steps
                    break
            else:
                still.append(k)
        active = still
    return eps


def success_rate(task: str, model: TinyVLAPolicy, sampler: DiffusionSampler,
                 init_ids: list[int], image_size: int, deterministic: bool = True,
                 seed: int = 0, max_steps: int = 150, **scene_kw) -> float:
    """Success over `init_ids`, one episode at a time in one scene, x_K from one seeded
    generator in episode order."""
    scene = MetaWorldScene(task, image_size=image_size, max_steps=max_steps, **scene_kw)
    gen = torch.Generator().manual_seed(seed)
    wins = [run_lockstep([scene], model, sampler, [i], deterministic, gen)[0].success
            for i in init_ids]
    scene.close()
    return float(np.mean(wins))
