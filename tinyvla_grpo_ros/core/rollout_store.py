"""Rollouts on disk, indexed by task / group / episode; crash-safe and never mixing versions.

    <root>/<task>/<group_id>/group.json                   task, init state, adapter name + version
    <root>/<task>/<group_id>/<episode_id>/chunks.safetensors
        images (C, Nc, H, W, 3) uint8, states (C, Ds), chains (C, K'+1, Ta, Da),
        log_probs (C, K'), executed (C,)                  C chunks of the episode
    <root>/<task>/<group_id>/<episode_id>/episode.json    reward, success, decided_by, ...

An episode is written into a hidden temporary directory (files fsynced) and renamed into place: a
reader sees a whole episode or none, also after a crash; `recover()` removes leftovers. A group is
pinned to the adapter version of its first episode; an episode of another version is refused.
Every file read is validated; a bad group or episode (garbage JSON, missing or mistyped fields,
torn tensors) is moved to `<root>/.quarantine/` with a warning naming the file and what is wrong,
and everything else goes on.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import atomic_io
from .checkpoint import read_safetensors

TENSOR_KEYS = ("images", "states", "chains", "log_probs", "executed")
OPERATOR_KEYS = ("op_images", "op_states", "op_actions", "op_executed")   # corrected chunks


class StoreError(RuntimeError):
    """A rollout could not be stored (disk full, bad name, version mix); nothing partial left."""


@dataclass
class EpisodeRecord:
    episode_id: str
    group_id: str
    task: str
    init_state_id: int
    adapter_name: str
    adapter_version: int
    instruction: str
    reward: float
    success: bool
    decided_by: str = "simulator"             # operator / simulator / timeout
    corrected_steps: int = 0                  # control steps the operator drove (takeover)
    duration_s: float = 0.0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    path: Path | None = None

    @property
    def num_chunks(self) -> int:
        return int(self.tensors["chains"].shape[0]) if "chains" in self.tensors else 0

    def meta(self) -> dict:
        d = asdict(self)
        d.pop("tensors")
        d.pop("path")
        return d


def episode_record(frames: list[dict], *, success: bool, corrections: dict | None = None,
                   corrected_steps: int = 0, **meta) -> EpisodeRecord:
    """The one builder of rollout records: per-chunk frames -> an EpisodeRecord.

    frames: one dict per chunk the episode executed, {images (Nc, H, W, 3) uint8, states (Ds,),
    chains (K'+1, Ta, Da), log_probs (K',), executed: int}; meta: the EpisodeRecord's other
    fields (episode_id, group_id, task, ...). The reward is `grpo.outcome_reward(success)`. An
    episode with no frames (it ended before any recorded chunk) keeps no tensors: it counts in
    its group's baseline and has nothing to score. corrections: the operator's corrected chunks
    (`core.corrections.correction_chunks`, OPERATOR_KEYS), stored beside the policy's;
    corrected_steps: how many control steps the operator drove."""
    from .grpo import outcome_reward
    tensors = {}
    if frames:
        stack = lambda k: torch.stack([torch.as_tensor(f[k]) for f in frames])  # noqa: E731
        tensors = {"images": stack("images"), "states": stack("states").float(),
                   "chains": stack("chains").float(), "log_probs": stack("log_probs").float(),
                   "executed": torch.tensor([int(f["executed"]) for f in frames])}
    tensors.update(corrections or {})
    return EpisodeRecord(reward=outcome_reward(success, corrected_steps), success=success,
                         tensors=tensors, corrected_steps=corrected_steps, **meta)


def _check_name(kind: str, name: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("..",):
        raise StoreError(f"invalid {kind} {name!r}: must be a plain, non-hidden directory name")
    return name


GROUP_FIELDS = {"task": str, "group_id": str, "init_state_id": int, "adapter_name": str,
                "adapter_version": int}


def _load_json(path: Path) -> dict:
    try:
        return atomic_io.read_json_object(path)
    except ValueError as e:
        raise StoreError(str(e)) from e


def _check_fields(path: Path, data: dict, fields: dict[str, type]) -> None:
    for name, kind in fields.items():
        v = data.get(name)
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        if kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            raise StoreError(f"{path}: {name!r} must be {kind.__name__}, got {v!r}")


EPISODE_FIELDS = GROUP_FIELDS | {"episode_id": str, "instruction": str, "reward": float,
                                 "success": bool}


class RolloutStore:
    def __init__(self, root: Path, keep_groups: int = 0, warn=None) -> None:
        """keep_groups > 0 prunes all but the newest `keep_groups` groups per task on write;
        warn(text) hears of every quarantined item (default: stderr)."""
        self.root = Path(root)
        self.keep_groups = keep_groups
        self.warn = warn or (lambda text: print(f"[rollout_store] {text}", file=sys.stderr))
        self.root.mkdir(parents=True, exist_ok=True)
        self.recover()

    def group_dir(self, task: str, group_id: str) -> Path:
        return self.root / _check_name("task", task) / _check_name("group id", group_id)

    def recover(self) -> int:
        """Remove temporary directories left by a crash mid-write; returns how many."""
        n = 0
        for tmp in self.root.glob("*/*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
        return n

    def write_episode(self, rec: EpisodeRecord) -> Path:
        missing = [k for k in TENSOR_KEYS if k not in rec.tensors]
        if missing:
            raise StoreError(f"episode {rec.episode_id} lacks tensors {missing}")
        gdir = self.group_dir(rec.task, rec.group_id)
        final = gdir / _check_name("episode id", rec.episode_id)
        if final.exists():
            raise StoreError(f"episode {rec.episode_id} is already stored in {gdir}")
        gmeta_path = gdir / "group.json"
        try:
            gdir.mkdir(parents=True, exist_ok=True)
            if gmeta_path.is_file():
                try:
                    g = self.group_meta(rec.task, rec.group_id)
                except StoreError as e:          # the group's own file is bad: start it anew
                    self.quarantine(gdir, str(e))
                    return self.write_episode(rec)
                if (g["adapter_name"], g["adapter_version"]) != (rec.adapter_name,
                                                                 rec.adapter_version):
                    raise StoreError(
                        f"group {rec.group_id} holds adapter {g['adapter_name']} "
                        f"v{g['adapter_version']}; episode {rec.episode_id} is from "
                        f"{rec.adapter_name} v{rec.adapter_version}: a group never mixes versions")
            else:
                atomic_io.write_json(gmeta_path, {
                    "task": rec.task, "group_id": rec.group_id,
                    "init_state_id": rec.init_state_id, "adapter_name": rec.adapter_name,
                    "adapter_version": rec.adapter_version, "created": time.time()})
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{rec.episode_id}-", dir=gdir))
            try:
                atomic_io.write_safetensors(tmp / "chunks.safetensors", rec.tensors)
                atomic_io.write_json(tmp / "episode.json", rec.meta())
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            atomic_io.fsync_dir(gdir)
        except OSError as e:
            raise StoreError(f"cannot store episode {rec.episode_id} in {gdir}: {e}") from e
        if self.keep_groups:
            self.prune(rec.task, self.keep_groups)
        rec.path = final
        return final

    def group_meta(self, task: str, group_id: str) -> dict:
        """group.json, validated (StoreError names the file and the field)."""
        path = self.group_dir(task, group_id) / "group.json"
        meta = _load_json(path)
        _check_fields(path, meta, GROUP_FIELDS)
        return meta

    def quarantine(self, path: Path, why: str) -> None:
        """Move a bad group or episode out of the way (kept for inspection), and say so."""
        rel = Path(path).resolve().relative_to(self.root.resolve())
        dest = self.root / ".quarantine" / f"{'-'.join(rel.parts)}-{time.time_ns()}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, dest)
            self.warn(f"quarantined {path} to {dest}: {why}")
        except OSError as e:
            self.warn(f"cannot quarantine {path} ({e}); skipping it: {why}")

    def episode_ids(self, task: str, group_id: str) -> list[str]:
        gdir = self.group_dir(task, group_id)
        if not gdir.is_dir():
            return []
        return sorted(p.name for p in gdir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and
                      (p / "episode.json").is_file())

    def groups(self, task: str) -> list[str]:
        """Group ids of a task, oldest first."""
        tdir = self.root / _check_name("task", task)
        if not tdir.is_dir():
            return []
        gs = [p for p in tdir.iterdir() if (p / "group.json").is_file()]
        return [p.name for p in sorted(gs, key=lambda p: (p.stat().st_mtime, p.name))]

    def group_summaries(self, task: str, prefix: str = "") -> list[tuple[str, dict, int]]:
        """(group id, group.json, stored episodes) of a task's groups whose id starts with
        `prefix`, oldest first: the one scan for "groups of version v" and "this robot's
        groups"."""
        out = []
        for g in self.groups(task):
            if not g.startswith(prefix):
                continue
            try:
                out.append((g, self.group_meta(task, g), len(self.episode_ids(task, g))))
            except StoreError as e:
                self.quarantine(self.group_dir(task, g), str(e))
        return out

    def tasks(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()
                      and not p.name.startswith("."))

    def read_episode(self, path: Path, with_tensors: bool = True) -> EpisodeRecord:
        """One episode, validated: StoreError names the file and what is wrong."""
        meta_path = Path(path) / "episode.json"
        meta = _load_json(meta_path)
        _check_fields(meta_path, meta, EPISODE_FIELDS)
        known = {f for f in EpisodeRecord.__dataclass_fields__} - {"tensors", "path"}
        if set(meta) - known:
            raise StoreError(f"{meta_path}: unknown fields {sorted(set(meta) - known)}")
        rec = EpisodeRecord(**meta, path=Path(path))
        if with_tensors:
            t_path = Path(path) / "chunks.safetensors"
            try:
                rec.tensors = read_safetensors(t_path)
            except ValueError as e:
                raise StoreError(str(e)) from e
            missing = [k for k in TENSOR_KEYS if k not in rec.tensors]
            unknown = sorted(set(rec.tensors) - set(TENSOR_KEYS) - set(OPERATOR_KEYS))
            for keys in (TENSOR_KEYS, OPERATOR_KEYS):
                lengths = {k: int(v.shape[0]) for k, v in rec.tensors.items() if k in keys}
                ragged = len(set(lengths.values())) > 1 or (keys is OPERATOR_KEYS and lengths
                                                            and len(lengths) != len(keys))
                if missing or unknown or ragged:
                    raise StoreError(f"{t_path}: tensors {sorted(rec.tensors)} with chunk counts "
                                     f"{lengths}; need {list(TENSOR_KEYS)} of one length (and "
                                     f"all or none of {list(OPERATOR_KEYS)}, of one length)")
        return rec

    def read_group(self, task: str, group_id: str, with_tensors: bool = True
                   ) -> list[EpisodeRecord]:
        """The group's readable episodes; a bad one is quarantined and left out."""
        gdir, out = self.group_dir(task, group_id), []
        for e in self.episode_ids(task, group_id):
            try:
                out.append(self.read_episode(gdir / e, with_tensors))
            except StoreError as err:
                self.quarantine(gdir / e, str(err))
        return out

    def recent_corrections(self, task: str, max_chunks: int) -> list[EpisodeRecord]:
        """The task's newest corrected episodes of any version, with tensors, oldest first,
        until they hold `max_chunks` corrected chunks: what a restarted learner's correction
        window holds."""
        out, chunks = [], 0
        for g in reversed(self.groups(task)):
            gdir = self.group_dir(task, g)
            for e in reversed(self.episode_ids(task, g)):
                try:
                    if not self.read_episode(gdir / e, with_tensors=False).corrected_steps:
                        continue
                    rec = self.read_episode(gdir / e)
                except StoreError as err:
                    self.quarantine(gdir / e, str(err))
                    continue
                if "op_actions" not in rec.tensors:
                    continue
                out.append(rec)
                chunks += int(rec.tensors["op_actions"].shape[0])
                if chunks >= max_chunks:
                    return out[::-1]
        return out[::-1]

    def prune(self, task: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` groups of a task; returns the removed group ids."""
        old = self.groups(task)[:-keep] if keep > 0 else []
        for g in old:
            shutil.rmtree(self.group_dir(task, g), ignore_errors=True)
        return old
