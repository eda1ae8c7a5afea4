"""The stateful policy: a checkpoint, per-task adapters, the sampler, and hot-swaps (no ROS).

policy_node is a shell around this class. `act` samples one chunk under a lock; a swap is prepared
(read, hash- and key-checked) without the lock, then applied in place under it, so a decision
waits at most for the in-place copy of the adapter tensors, never for disk I/O or verification.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .adapters import AdaptedPolicy, AdapterConfig, read_adapter_version, version_dir
from .checkpoint import load_checkpoint
from .config import SamplerConfig
from .model import Observation
from .sampler import Chunk, DiffusionSampler, paired_init_noise


@dataclass
class PreparedSwap:
    adapter: str
    version: int
    path: Path
    sha256: str
    state: dict[str, torch.Tensor]
    load_ms: float
    preset: str | None = None       # the preset it was written under (None: the policy's own)


class PolicyRuntime:
    def __init__(self, checkpoint: Path, adapters: list[str], adapter_root: Path,
                 adapter_cfg: AdapterConfig | None = None,
                 sampler_overrides: dict | None = None, device: str = "cpu") -> None:
        model, sampler_cfg, self.meta = load_checkpoint(checkpoint, map_location=device)
        if sampler_overrides:
            sampler_cfg = SamplerConfig.from_dict(sampler_cfg.to_dict() | sampler_overrides)
        self.device = torch.device(device)
        # Built before the adapters wrap the model: its frozen prefix (if any) is the SFT policy.
        self.sampler = DiffusionSampler(model.config, sampler_cfg, sft_model=model).to(device)
        self.policy = AdaptedPolicy(model, adapter_cfg or AdapterConfig(), adapters)
        self.policy.model.to(self.device).eval()
        for p in self.policy.model.parameters():
            p.requires_grad_(False)
        self.adapter_root = Path(adapter_root)
        self.versions = {a: 0 for a in adapters}           # version 0 = the SFT start
        self.lock = threading.Lock()

    def select_task(self, adapter: str) -> None:
        with self.lock:
            self.policy.activate(adapter)

    @property
    def active(self) -> tuple[str, int]:
        return self.policy.active, self.versions[self.policy.active]

    @torch.no_grad()
    def act(self, images: np.ndarray, state: np.ndarray, instruction: str,
            generator: torch.Generator | None = None, deterministic: bool = False,
            paired: tuple[int, int, int] | None = None) -> tuple[Chunk, str, int]:
        """images (Nc, H, W, 3) uint8, state (Ds,) -> (chunk with B = 1, adapter, version).

        paired = (seed, init state, chunk index): x_K is `paired_init_noise`'s draw for them
        instead of one from `generator`, so that every version meets the same x_K."""
        init_noise = None
        if paired is not None:
            cfg = self.policy.model.config
            seed, init_id, index = paired
            init_noise = paired_init_noise(seed, [init_id], index, (cfg.horizon, cfg.action_dim))
        obs = Observation(torch.from_numpy(np.ascontiguousarray(images))[None].to(self.device),
                          torch.from_numpy(np.asarray(state, np.float32))[None].to(self.device),
                          [instruction])
        with self.lock:
            chunk = self.sampler.sample(self.policy.model, obs, generator, deterministic,
                                        init_noise=init_noise)
            adapter, version = self.active
        return chunk, adapter, version

    def prepare_swap(self, adapter: str, version: int, path: Path | None = None,
                     sha256: str | None = None) -> PreparedSwap:
        """Read and verify a version (off the decision path). Raises ValueError when bad."""
        if adapter not in self.versions:
            raise ValueError(f"unknown adapter {adapter!r}; this policy serves "
                             f"{sorted(self.versions)}")
        t0 = time.perf_counter()
        path = Path(path) if path else version_dir(self.adapter_root, adapter, version)
        state, meta = read_adapter_version(path, root=self.adapter_root, expected_sha256=sha256)
        if meta.get("adapter") != adapter or int(meta.get("version", -1)) != version:
            raise ValueError(f"{path} holds {meta.get('adapter')} v{meta.get('version')}, not "
                             f"{adapter} v{version}")
        # Preset/key/shape/finiteness check against the live tensors, still without the lock.
        self.policy.check_adapter_state(state, adapter, f"adapter {path}", meta.get("preset"))
        return PreparedSwap(adapter, version, path, meta["sha256"], state,
                            (time.perf_counter() - t0) * 1e3, meta.get("preset"))

    def apply_swap(self, prepared: PreparedSwap) -> float:
        """In-place copy under the lock, between two chunks; returns the time the lock was held."""
        with self.lock:
            t0 = time.perf_counter()
            self.policy.load_adapter_state(
                {k: v.to(self.device) for k, v in prepared.state.items()}, prepared.adapter,
                what=f"adapter {prepared.path}", preset=prepared.preset)
            self.versions[prepared.adapter] = prepared.version
            return (time.perf_counter() - t0) * 1e3
