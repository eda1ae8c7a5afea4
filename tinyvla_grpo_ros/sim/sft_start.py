"""One command for the SFT starting point: expert demos -> SFT checkpoint -> measured success.

    python -m tinyvla_grpo_ros.sim.sft_start --task reach-v3 --demos 60 --steps 3000 \
        --goal-marker-radius 0.04

The result is cached under `--cache` (default cache/sft) by a hash of its settings: a second call
returns at once. N demos and SFT steps are chosen so that the policy is decent but clearly
imperfect; the measured deterministic success on held-out init states is stored in the
checkpoint's meta ("sft_success") and printed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..core.config import ModelConfig, SamplerConfig, SFTConfig
from ..core.demos import load_demos
from ..core.model import build_model
from ..core.sampler import DiffusionSampler
from ..core.sft import train_sft
from .metaworld_scene import ACTION_NAMES, JOINT_NAMES
from .rollout import record_expert_demos, success_rate

EVAL_FIRST_ID = 10_000       # held-out init states start here (demos use 0..N-1)
# The learning bench's SFT start per task: (demos, SFT steps), for a decent but clearly imperfect
# policy (docs/RESULTS.md lists each start's measured success).
TASK_SFT = {"reach-v3": (60, 3000), "button-press-topdown-v3": (10, 1000), "push-v3": (60, 3000)}


def task_sft_start(task: str, cache: Path, goal_marker_radius: float = 0.04, demos: int = 0,
                   steps: int = 0, architecture: str = "tinyvla") -> Path:
    """The SFT start of `task` (built once, then cached): TASK_SFT's demos and steps unless
    `demos` > 0 is given; `architecture` "diffusion_policy" trains the LeRobot-shaped model."""
    demos, steps = (demos, steps) if demos else TASK_SFT.get(task, (60, 3000))
    return build_sft_start(task, demos, steps, cache=cache,
                           goal_marker_radius=goal_marker_radius, architecture=architecture)


def build_sft_start(task: str = "reach-v3", demos: int = 60, steps: int = 3000,
                    preset: str = "tiny", eval_episodes: int = 20, seed: int = 0,
                    cache: Path = Path("cache/sft"), executed_steps: int = 4,
                    camera: str = "corner2", goal_marker_radius: float = 0.0,
                    render_quality: str = "fast", architecture: str = "tinyvla") -> Path:
    """architecture "diffusion_policy": the LeRobot-shaped model (core/dp_model.py, GroupNorm
    ResNet-18 trained from scratch) instead of the TinyVLA-style one."""
    settings = dict(task=task, demos=demos, steps=steps, preset=preset, seed=seed,
                    eval_episodes=eval_episodes, executed_steps=executed_steps, format=3)
    arch = {} if architecture == "tinyvla" else dict(
        architecture=architecture, dp_keypoints=16, dp_backbone_norm="group")
    settings.update(arch)
    scene_kw = dict(camera=camera, goal_marker_radius=goal_marker_radius,
                    render_quality=render_quality)
    settings.update(scene_kw)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(cache) / f"{task}-{key}"
    if (out / "config.json").is_file():
        print(f"[sft_start] cached: {out}")
        return out
    t0 = time.time()
    mcfg = ModelConfig.preset(preset, state_dim=len(JOINT_NAMES), action_dim=len(ACTION_NAMES),
                              **arch)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"[sft_start] recording {demos} expert demonstrations of {task} ...", flush=True)
    record_expert_demos(task, demos, tmp / "demos", image_size=mcfg.image_size,
                        decision_every=executed_steps, **scene_kw)
    torch.manual_seed(seed)
    model = build_model(mcfg)
    train_sft(model, load_demos(tmp / "demos"), SFTConfig(steps=steps, seed=seed),
              log_path=tmp / "sft_loss.csv")
    scfg = SamplerConfig(executed_steps=executed_steps)
    sampler = DiffusionSampler(mcfg, scfg, sft_model=model)
    ids = list(range(EVAL_FIRST_ID, EVAL_FIRST_ID + eval_episodes))
    rate = success_rate(task, model, sampler, ids, mcfg.image_size, **scene_kw)
    save_checkpoint(tmp, model, scfg, meta=dict(settings, sft_success=rate,
                                                eval_init_ids=[ids[0], ids[-1]],
                                                seconds=round(time.time() - t0, 1)))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"[sft_start] {out}: deterministic success {rate:.2f} on {eval_episodes} held-out "
          f"init states ({time.time() - t0:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--demos", type=int, default=60)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("cache/sft"))
    ap.add_argument("--camera", default="corner2")
    ap.add_argument("--goal-marker-radius", type=float, default=0.04,
                    help="goal drawn this wide, m (rendering only; Meta-World draws 0.02)")
    ap.add_argument("--render-quality", default="fast", choices=("fast", "full"))
    args = ap.parse_args(argv)
    out = build_sft_start(args.task, args.demos, args.steps, args.preset, args.eval_episodes,
                          args.seed, args.cache, camera=args.camera,
                          goal_marker_radius=args.goal_marker_radius,
                          render_quality=args.render_quality)
    _, _, meta = load_checkpoint(out)
    print(json.dumps({"checkpoint": str(out), "sft_success": meta["sft_success"]}))


if __name__ == "__main__":
    main()
