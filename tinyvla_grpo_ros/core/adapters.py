"""Named LoRA adapters over peft, trainable-set presets, and adapter versions on disk.

One adapter per task (isolated: training task A never touches task B's tensors). The reference
policy for KL is the same model with adapters disabled (free: no second copy).

Trainable presets (the question that started the project):
    adapters                     LoRA tensors of the active adapters only
    head                         the diffusion head only (no LoRA)
    adapters+head+norms          LoRA + head + every normalization layer
    adapters+last_k_blocks+head  LoRA + the last k LM blocks + head
    full                         everything

An adapter version on disk (written atomically; the sha256 covers adapter_model.safetensors):
    <root>/<adapter>/vNNNN/adapter_model.safetensors   LoRA tensors (peft key format) + any trained
                                                       base tensors of the preset (their own names)
    <root>/<adapter>/vNNNN/adapter_config.json         peft LoraConfig
    <root>/<adapter>/vNNNN/meta.json                   version, parent, sha256, preset, metrics
Loading into a live model checks the hash, the exact key set, shapes and finiteness before it
writes a single value: a bad file changes nothing. The trainable set is widened by config (a wider
`preset`, nodes restarted): versions written under a narrower preset still load, with the SFT
values for the tensors they did not train; a version of a wider preset is refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from . import atomic_io
from .checkpoint import check_state_dict, read_safetensors
from .model import TinyVLAPolicy

PRESETS = ("adapters", "head", "adapters+head+norms", "adapters+last_k_blocks+head", "full")
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


@dataclass
class AdapterConfig:
    """LoRA settings (Hu et al. 2021) and the trainable set."""

    rank: int = 8                           # r; TinyVLA uses LoRA on the LM
    alpha: float = 16.0                     # scaling alpha / r
    dropout: float = 0.0                    # 0 keeps sampling and re-scoring identical
    target_modules: tuple[str, ...] = (     # LM attention + MLP, and the head's FiLM layers
        "query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h", "film")
    preset: str = "adapters"                # one of PRESETS
    last_k_blocks: int = 1                  # for adapters+last_k_blocks+head

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.last_k_blocks < 1:
            raise ValueError(f"last_k_blocks must be >= 1, got {self.last_k_blocks}")

    def lora(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none")


class AdaptedPolicy:
    """A TinyVLAPolicy wrapped by peft with named adapters; owns which tensors train."""

    def __init__(self, model: TinyVLAPolicy, cfg: AdapterConfig, adapters: list[str]) -> None:
        if not adapters:
            raise ValueError("at least one adapter (task) name is needed")
        self.cfg = cfg
        self.peft: PeftModel = get_peft_model(model, cfg.lora(), adapter_name=adapters[0])
        for name in adapters[1:]:
            self.peft.add_adapter(name, cfg.lora())
        self.active = adapters[0]
        self.sft_base: dict[str, torch.Tensor] = {}    # SFT values of trainable base tensors
        self.activate(adapters[0])

    @property
    def model(self) -> TinyVLAPolicy:
        """The wrapped policy (LoRA layers injected); call encode/forward on it."""
        return self.peft.base_model.model

    @property
    def adapter_names(self) -> list[str]:
        return list(self.peft.peft_config)

    def activate(self, adapter: str) -> None:
        """Make `adapter` the active one; re-apply the preset."""
        if adapter not in self.peft.peft_config:
            raise KeyError(f"unknown adapter {adapter!r}; known: {self.adapter_names}")
        self.active = adapter
        self.peft.base_model.set_adapter([adapter])
        self.set_preset(self.cfg.preset)

    def _trains(self, name: str, preset: str) -> bool:
        """Whether tensor `name` trains under `preset` (LoRA: of the active adapters only)."""
        lora_of = _lora_adapter(name)
        if lora_of is not None:
            return lora_of == self.active and preset != "head"
        if preset == "full":
            return True
        n_layers = self.model.config.lm_layers
        last = tuple(f"lm.layers.{i}." for i in range(max(0, n_layers - self.cfg.last_k_blocks),
                                                       n_layers))
        is_norm = "norm" in name or "layernorm" in name
        return (name.startswith("head.") and preset != "adapters") \
            or (is_norm and preset == "adapters+head+norms") \
            or (preset == "adapters+last_k_blocks+head" and name.startswith(last))

    def base_keys_of(self, preset: str) -> set[str]:
        """The base (non-LoRA) tensors a version written under `preset` carries."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        return {n for n, _ in self.model.named_parameters()
                if _lora_adapter(n) is None and self._trains(n, preset)}

    def set_preset(self, preset: str) -> list[str]:
        """Set requires_grad for the preset; returns the names of the trainable tensors.

        The first time a base tensor joins the trainable set its value is kept (it has not
        been trained yet: the SFT value), so that loading a version written under a narrower
        preset can give back the SFT values of the tensors that version did not train (for
        `full`, a second copy of the weights)."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        self.cfg.preset = preset
        names, base = [], set()
        for name, p in self.model.named_parameters():
            train = self._trains(name, preset)
            p.requires_grad_(train)
            if train:
                names.append(name)
                if _lora_adapter(name) is None:
                    base.add(name)
                    if name not in self.sft_base:
                        self.sft_base[name] = p.detach().clone()
        self.base_keys = base          # base tensors that belong to an exported version
        return names

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def modifies_base(self) -> bool:
        return self.cfg.preset != "adapters"

    def reference(self):
        """Context manager: the reference policy (adapters disabled)."""
        if self.modifies_base():
            raise ValueError(f"KL to the reference needs preset 'adapters' (the reference is the "
                             f"model with adapters disabled); preset is {self.cfg.preset!r}")
        return self.peft.disable_adapter()

    # ----- export / import -----
    def adapter_state(self, adapter: str | None = None) -> dict[str, torch.Tensor]:
        """The adapter's tensors in peft's key format, plus the preset's trained base tensors."""
        adapter = adapter or self.active
        out = {}
        for name, p in self.model.named_parameters():
            lora_of = _lora_adapter(name)
            if lora_of == adapter:
                out["base_model.model." + name.replace(f".{adapter}.", ".")] = p.detach()
            elif name in self.base_keys:
                out[name] = p.detach()
        return out

    def check_adapter_state(self, state: dict[str, torch.Tensor], adapter: str | None = None,
                            what: str = "adapter", preset: str | None = None) -> set[str]:
        """Raise ValueError unless `state`, a version written under `preset` (default: this
        policy's), can be loaded; returns the base tensors it lacks (they get SFT values).

        The state must hold exactly the adapter's LoRA tensors and the base tensors `preset`
        trains, finite. A narrower preset than this policy's is accepted (the trainable set was
        widened by config since that version was written). A wider one is refused: this policy
        would neither run nor carry the tensors only that preset trains."""
        adapter = adapter or self.active
        preset = preset or self.cfg.preset
        theirs = self.base_keys_of(preset)
        extra = sorted(theirs - self.base_keys)
        if extra:
            raise ValueError(f"{what} was written under preset {preset!r}, which trains tensors "
                             f"that preset {self.cfg.preset!r} does not ({extra[:3]}"
                             f"{' ...' if len(extra) > 3 else ''}); run a preset at least as "
                             f"wide as {preset!r}")
        untouched = self.base_keys - theirs
        check_state_dict({k: v for k, v in self.adapter_state(adapter).items()
                          if k not in untouched}, state, what)
        bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"{what} has non-finite values in {bad[:5]}")
        return untouched

    def load_adapter_state(self, state: dict[str, torch.Tensor], adapter: str | None = None,
                           what: str = "adapter", preset: str | None = None) -> None:
        """Copy `state` (checked by `check_adapter_state`) into the live tensors in place; base
        tensors its preset did not train get their SFT values back. Nothing is written on
        error."""
        adapter = adapter or self.active
        untouched = self.check_adapter_state(state, adapter, what, preset)
        live = self.adapter_state(adapter)
        with torch.no_grad():
            for k, v in state.items():
                live[k].copy_(v.to(live[k].dtype))
            for k in untouched:
                live[k].copy_(self.sft_base[k].to(live[k].device))


def _lora_adapter(param_name: str) -> str | None:
    """'...lora_A.<adapter>.weight' -> '<adapter>'; None for base tensors."""
    m = re.search(r"\.lora_(?:A|B|embedding_A|embedding_B)\.([^.]+)\.", param_name)
    return m.group(1) if m else None


def version_dir(root: Path, adapter: str, version: int) -> Path:
    return Path(root) / adapter / f"v{version:04d}"


def list_versions(root: Path, adapter: str) -> list[int]:
    """Complete versions on disk (meta.json present), ascending."""
    d = Path(root) / adapter
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _VERSION_DIR.match(p.name)
        if m and (p / "meta.json").is_file():
            out.append(int(m.group(1)))
    return sorted(out)


def save_adapter_version(policy: AdaptedPolicy, root: Path, version: int, parent: int | None,
                         metrics: dict[str, float] | None = None, adapter: str | None = None
                         ) -> tuple[Path, str]:
    """Write one version atomically (tensors, config, meta.json last) -> (dir, sha256).

    One writer per adapter root (the learner): temp files left in `d` by a writer that was
    killed mid-write are removed first."""
    adapter = adapter or policy.active
    d = version_dir(root, adapter, version)
    if (d / "meta.json").exists():
        raise FileExistsError(f"adapter version {d} already exists")
    for leftover in d.glob(".*.tmp") if d.is_dir() else []:
        leftover.unlink()
    sha = atomic_io.write_safetensors(d / "adapter_model.safetensors",
                                      policy.adapter_state(adapter),
                                      metadata={"adapter": adapter, "version": str(version)})
    atomic_io.write_json(d / "adapter_config.json", policy.peft.peft_config[adapter].to_dict()
                         | {"target_modules": sorted(policy.cfg.target_modules)})
    atomic_io.write_json(d / "meta.json", {
        "adapter": adapter, "version": version, "parent_version": parent, "sha256": sha,
        "preset": policy.cfg.preset, "metrics": metrics or {}})
    return d, sha


def check_meta(meta_path: Path) -> dict[str, Any]:
    """A version's meta.json, validated: a JSON object with the adapter's name (str), its
    version (int >= 0), the sha256 of its tensors (64 hex digits) and, when present, a known
    preset. ValueError names the file and what is wrong."""
    meta = atomic_io.read_json_object(meta_path)
    v, sha = meta.get("version"), meta.get("sha256")
    if not isinstance(meta.get("adapter"), str):
        raise ValueError(f"{meta_path}: 'adapter' must be a name, got {meta.get('adapter')!r}")
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{meta_path}: 'version' must be an integer >= 0, got {v!r}")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef"
                                                             for c in sha)):
        raise ValueError(f"{meta_path}: 'sha256' must be 64 hex digits, got {sha!r}")
    if meta.get("preset") is not None and meta["preset"] not in PRESETS:
        raise ValueError(f"{meta_path}: unknown preset {meta['preset']!r}")
    return meta


def read_adapter_version(path: Path, root: Path | None = None, expected_sha256: str | None = None
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a version directory: inside `root`, meta present, sha256 matching."""
    path = Path(path).resolve()
    if root is not None and not path.is_relative_to(Path(root).resolve()):
        raise ValueError(f"adapter path {path} lies outside the adapter root {root}")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{path} is not a complete adapter version (meta.json missing)")
    meta = check_meta(meta_path)
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{weights} is missing")
    sha = atomic_io.sha256_file(weights)
    for want in (meta.get("sha256"), expected_sha256):
        if want and want != sha:
            raise ValueError(f"sha256 mismatch for {weights}: file {sha[:12]}, expected "
                             f"{want[:12]}")
    return read_safetensors(weights), meta
