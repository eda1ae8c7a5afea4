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

from ..core.corrections import OperatorConfig, SimulatedOperator
from ..core.demos import Demonstration, save_demo
from ..core.model import Observation, TinyVLAPolicy
from ..core.observation_history import StampedHistory, history_steps, stack_steps
from ..core.sampler import DiffusionSampler, paired_init_noise
from .metaworld_scene import MetaWorldScene, expert_policy


def scene_observation(scene: MetaWorldScene) -> Observation:
    img = torch.from_numpy(scene.render())[None, None]                 # (1, 1, H, W, 3)
    state = torch.from_numpy(scene.joint_positions()).float()[None]    # (1, Ds)
    return Observation(img, state, [scene.instruction])


class SceneHistory:
    """A scene's observation steps for a policy with n_obs_steps To (core/observation_history.py,
    stamped in control steps): `record` after a control step whose observation a later decision
    needs, `observation` at the decision. With To = 1 it only renders the current step."""

    def __init__(self, scene: MetaWorldScene, n_obs_steps: int) -> None:
        self.scene, self.n = scene, n_obs_steps
        self.steps = StampedHistory(n_obs_steps - 1)

    def record(self) -> None:
        if self.n > 1 and (not len(self.steps) or self.steps.items[-1][0] != self.scene.steps):
            self.steps.add(self.scene.steps, (self.scene.render()[None],
                                              self.scene.joint_positions()))

    def observation(self) -> Observation:
        if self.n == 1:
            return scene_observation(self.scene)
        self.record()
        steps = history_steps(self.steps, self.n, 1.0, 0.0, f"scene {self.scene.task}")
        if isinstance(steps, str):
            raise RuntimeError(steps)
        images, state = stack_steps([f for f, _ in steps], [s for _, s in steps])
        return Observation(torch.from_numpy(images)[None],
                           torch.from_numpy(state).float()[None], [self.scene.instruction])


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
    operator_steps: list[dict] = field(default_factory=list)   # corrections (operator on)
    corrected_steps: int = 0


@torch.no_grad()
def run_lockstep(scenes: list[MetaWorldScene], model: TinyVLAPolicy, sampler: DiffusionSampler,
                 init_ids: list[int], deterministic: bool, generator: torch.Generator,
                 record: bool = False, noise_key: int | None = None,
                 operator: OperatorConfig | None = None) -> list[LockstepEpisode]:
    """One episode per init id, scene i running init_ids[i], with one batched sampler call per
    decision point for all episodes still running (the model runs once, not len(init_ids) times).

    record=True keeps, per decision, what GRPO needs: the observation, the chain and its
    log-probs (`frames`, turned into an EpisodeRecord by core.rollout_store.episode_record).

    noise_key = k: the x_K of the episode of init id i at decision index d is drawn from its own
    generator, seeded by (k, i, d) (`core.sampler.paired_init_noise`). The draw then belongs to
    the state and the decision, not to the batch: two evaluations with the same key meet the same
    x_K in every state at every decision, whichever other episodes ran beside them or ended
    earlier. Without it, x_K comes from `generator` for the episodes still running.

    operator: a simulated operator (core/corrections.py) per episode, watching every control
    step against the task's scripted expert. While it is in control the episode takes no
    decision and runs the expert's actions (`operator_steps`, with the observation at the
    takeover and at every decision boundary after it); a policy chunk it interrupts is not
    recorded (its executed prefix is not what was scored)."""
    if len(init_ids) > len(scenes):
        raise ValueError(f"{len(init_ids)} episodes need as many scenes, have {len(scenes)}")
    eps = [LockstepEpisode(i) for i in init_ids]
    for scene, i in zip(scenes, init_ids):
        scene.reset(i)
    hists = [SceneHistory(scene, model.config.n_obs_steps) for scene in scenes[:len(init_ids)]]
    ops = [SimulatedOperator(operator) for _ in init_ids] if operator is not None else None
    expert = expert_policy(scenes[0].task) if operator is not None else None
    active = list(range(len(init_ids)))
    n_exec = sampler.executed_steps()
    decision = 0
    while active:
        deciding = [k for k in active if ops is None or not ops[k].in_control]
        chunk, obs = None, None
        if deciding:
            parts = [hists[k].observation() for k in deciding]
            obs = Observation(torch.cat([p.images for p in parts]),
                              torch.cat([p.state for p in parts]),
                              [s for p in parts for s in p.instruction])
            init_noise = None
            if noise_key is not None:
                init_noise = paired_init_noise(noise_key, [init_ids[k] for k in deciding],
                                               decision, (model.config.horizon,
                                                          model.config.action_dim))
            chunk = sampler.sample(model, obs, generator, deterministic=deterministic,
                                   init_noise=init_noise)
        decision += 1
        rows = {k: row for row, k in enumerate(deciding)}
        still = []
        for k in active:
            if ops is None:
                done = _policy_steps(hists[k], chunk.actions[rows[k], :n_exec].numpy(), eps[k])
                interrupted = False
            else:
                plan = chunk.actions[rows[k], :n_exec].numpy() if k in rows else None
                done, interrupted = _steps_with_operator(hists[k], plan, n_exec, eps[k],
                                                         ops[k], expert, decision)
            if record and k in rows and not interrupted:
                row = rows[k]
                eps[k].frames.append({
                    "images": obs.images[row], "states": obs.state[row],
                    "chains": chunk.chain[row], "log_probs": chunk.log_probs[row],
                    "executed": n_exec})
            if not done:
                still.append(k)
        active = still
    return eps


def _policy_steps(hist: SceneHistory, actions: np.ndarray, ep: LockstepEpisode) -> bool:
    """Run a chunk's executed actions (recording the steps the next decision looks back on);
    whether the episode ended."""
    for j, a in enumerate(actions):
        r = hist.scene.step(a)
        if r.done:
            ep.success, ep.steps = r.success, r.steps
            return True
        if len(actions) - j - 1 < hist.n:          # one of the next decision's To steps
            hist.record()
    return False


def _steps_with_operator(hist: SceneHistory, plan: np.ndarray | None, n_exec: int,
                         ep: LockstepEpisode, op: SimulatedOperator, expert, decision: int
                         ) -> tuple[bool, bool]:
    """One decision period under the simulated operator's eye: the policy's plan (None while
    the operator drives) step by step until the operator takes over, the operator's actions
    until it hands back. Returns (episode ended, the policy's chunk was interrupted). Every
    step is recorded for the history (a takeover or hand-back may come at any step)."""
    interrupted, scene = False, hist.scene
    for j in range(n_exec):
        expert_a = scene.expert_action(expert)
        was_in_control = op.in_control
        policy_a = plan[j] if plan is not None and not interrupted else None
        if op.step(policy_a, expert_a):
            boundary = j == 0 or not was_in_control
            interrupted = interrupted or plan is not None
            o = hist.observation() if boundary else None
            ep.operator_steps.append({"segment": op.segments, "action": expert_a,
                                      "obs": (o.images[0], o.state[0]) if o else None})
            ep.corrected_steps += 1
            a = expert_a
        elif was_in_control:
            return False, interrupted            # handed back: the policy decides next
        else:
            a = plan[j]
        r = scene.step(a)
        if r.done:
            ep.success, ep.steps = r.success, r.steps
            return True, interrupted
        hist.record()
    return False, interrupted


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
