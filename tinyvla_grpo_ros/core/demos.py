"""Demonstration episodes on disk: the format the SFT trainer reads and the sim's expert writes.

    <dir>/<episode_id>/data.safetensors   states (T, Ds), actions (T, Da), images (F, Nc, H, W, 3)
                                          uint8 and frame_steps (F,): the step of each frame
    <dir>/<episode_id>/meta.json          {"task", "instruction", "success", "length"}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import atomic_io
from .checkpoint import read_safetensors


@dataclass
class Demonstration:
    images: torch.Tensor          # (F, Nc, H, W, 3) uint8, frames at decision points
    states: torch.Tensor          # (T, Ds) every control step
    actions: torch.Tensor         # (T, Da) every control step
    instruction: str
    task: str = ""
    success: bool = True
    frame_steps: torch.Tensor | None = None   # (F,) step of each frame; None = every step

    def __post_init__(self) -> None:
        T = self.states.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 5:
            raise ValueError(f"images must be (F, Nc, H, W, 3) uint8, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.actions.shape[0] != T:
            raise ValueError(f"states and actions must have the same length T, got "
                             f"{T}, {self.actions.shape[0]}")
        if self.frame_steps is None:
            self.frame_steps = torch.arange(self.images.shape[0])
        fs = self.frame_steps
        if fs.shape != (self.images.shape[0],) or (fs.numel() and (fs.min() < 0 or fs.max() >= T)):
            raise ValueError(f"frame_steps must give a step in [0, {T}) for each of the "
                             f"{self.images.shape[0]} frames")


def save_demo(directory: Path, episode_id: str, demo: Demonstration) -> Path:
    d = Path(directory) / episode_id
    atomic_io.write_safetensors(d / "data.safetensors", {
        "images": demo.images, "states": demo.states.float(), "actions": demo.actions.float(),
        "frame_steps": demo.frame_steps.long()})
    atomic_io.write_json(d / "meta.json", {"task": demo.task, "instruction": demo.instruction,
                                           "success": demo.success,
                                           "length": int(demo.states.shape[0])})
    return d


def load_demos(directory: Path, only_successful: bool = True) -> list[Demonstration]:
    demos = []
    for meta_path in sorted(Path(directory).glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        if only_successful and not meta["success"]:
            continue
        t = read_safetensors(meta_path.parent / "data.safetensors")
        demos.append(Demonstration(t["images"], t["states"], t["actions"], meta["instruction"],
                                   meta.get("task", ""), meta["success"], t.get("frame_steps")))
    if not demos:
        raise ValueError(f"no {'successful ' if only_successful else ''}demonstrations in "
                         f"{directory}")
    return demos
