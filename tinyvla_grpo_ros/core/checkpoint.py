"""Checkpoint directory of a policy: round-trips bit-exactly, rejects mismatches by tensor name.

    <dir>/config.json            {"model": ModelConfig, "sampler": SamplerConfig, "meta": {...}}
    <dir>/model.safetensors      every parameter and buffer (normalization stats included)
    <dir>/normalization.json     the same stats, human-readable
    <dir>/adapters/<name>/vNNNN/ adapter versions (see adapters.py)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import atomic_io
from .config import ModelConfig, SamplerConfig
from .model import TinyVLAPolicy, build_model


def save_checkpoint(directory: Path, model: TinyVLAPolicy,
                    sampler_cfg: SamplerConfig | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    (directory / "adapters").mkdir(parents=True, exist_ok=True)
    atomic_io.write_safetensors(directory / "model.safetensors", model.state_dict())
    norm = {k: v.tolist() for k, v in model.normalizer.state_dict().items()}
    atomic_io.write_json(directory / "normalization.json", norm)
    text = getattr(getattr(model, "prompt", None), "tokenizer_json", None)
    if text is not None:                       # a bpe model's tokenizer travels with it
        atomic_io.write_bytes(directory / "tokenizer.json", text.encode("utf-8"))
    atomic_io.write_json(directory / "config.json", {
        "model": model.config.to_dict(),
        "sampler": (sampler_cfg or SamplerConfig()).to_dict(),
        "meta": meta or {}})
    return directory


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                     what: str) -> None:
    """Raise ValueError naming every missing, unexpected or wrong-shape tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {tuple(found[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in found and found[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}"
                        f"{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append("shape mismatch " + "; ".join(wrong[:5]))
    if problems:
        raise ValueError(f"{what} does not match the model: " + " | ".join(problems))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a truncated or corrupt file raises ValueError naming the path."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


def stored_sampler_config(stored: dict[str, Any]) -> SamplerConfig:
    """A checkpoint's sampler settings, but the recipe's adopted value for the settings of
    `SamplerConfig.ADOPTED` (how fine-tuning treats the SFT policy is not the SFT's to say)."""
    return SamplerConfig.from_dict({k: v for k, v in stored.items()
                                    if k not in SamplerConfig.ADOPTED})


def read_configs(directory: Path) -> tuple[ModelConfig, SamplerConfig]:
    """The model and sampler configs a checkpoint was saved with (config.json only, no
    weights)."""
    cfg_path = Path(directory) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {directory} (config.json missing)")
    try:
        data = json.loads(cfg_path.read_text())
        return (ModelConfig.from_dict(data["model"]),
                stored_sampler_config(data.get("sampler", {})))
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise ValueError(f"{cfg_path}: bad config: {e!r}") from e


def read_sampler_config(directory: Path) -> SamplerConfig:
    """The sampler config a checkpoint was saved with (config.json only, no weights)."""
    return read_configs(directory)[1]


def load_checkpoint(directory: Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[TinyVLAPolicy, SamplerConfig, dict[str, Any]]:
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {directory} (config.json missing)")
    data = json.loads(cfg_path.read_text())
    model = build_model(ModelConfig.from_dict(data["model"]))
    state = read_safetensors(directory / "model.safetensors")
    check_state_dict(model.state_dict(), state, f"checkpoint {directory}")
    model.load_state_dict(state, strict=True)
    if model.config.tokenizer == "bpe":
        tok = directory / "tokenizer.json"
        if not tok.is_file():
            raise FileNotFoundError(f"checkpoint {directory}: its model's tokenizer is 'bpe' and "
                                    "tokenizer.json is missing")
        try:
            model.attach_tokenizer(tok.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"checkpoint {directory}: tokenizer.json: {e}") from e
    return (model.to(map_location), stored_sampler_config(data.get("sampler", {})),
            data.get("meta", {}))
