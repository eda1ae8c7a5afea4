"""Configs as documented dataclasses that check themselves.

Shape vocabulary (everywhere in core/): B batch, G group size, K denoising steps, K' fine-tuned
(stochastic) steps, Ta action horizon, Da action dim, Ds state dim, To observation steps (1 here),
Nc cameras, H x W image size.

`ModelConfig` describes the network, `SamplerConfig` the stochastic diffusion sampler. Both load
from
and save to plain dicts (JSON / YAML); unknown keys are an error, never silently ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def preset_dirs() -> list[Path]:
    """Where model presets live: the source tree's config/models, then the installed share dir."""
    dirs = [Path(__file__).resolve().parents[2] / "config" / "models"]
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory("tinyvla_grpo_ros")) / "config" / "models")
    except (ImportError, LookupError, ValueError, OSError):
        pass
    return [d for d in dirs if d.is_dir()]


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig:
    """A TinyVLA-style policy: vision encoder + Pythia-style LM + FiLM 1-D UNet diffusion head."""

    name: str = "tiny"                      # preset name, for logs and checkpoints
    # --- observation ---
    image_size: int = 64                    # H = W of every camera image fed to the encoder
    num_cameras: int = 1                    # Nc
    state_dim: int = 4                      # Ds, robot state (joint positions, gripper)
    # --- vision encoder ---
    vision: str = "cnn"                     # "cnn" (small, CPU) or "vit" (CLIP ViT from a config)
    cnn_channels: tuple[int, ...] = (16, 32, 64)  # per stride-2 conv stage; tokens = (H/2^n)^2
    vit_hidden: int = 768                   # CLIP ViT width (ViT-B/16: 768)
    vit_layers: int = 12                    # CLIP ViT depth (ViT-B/16: 12)
    vit_heads: int = 12
    vit_patch: int = 16
    # --- language model (GPTNeoX, Pythia family) ---
    lm_hidden: int = 64                     # Pythia-70m: 512, 410m: 1024, 1.4b: 2048
    lm_layers: int = 2                      # Pythia-70m: 6, 410m: 24, 1.4b: 24
    lm_heads: int = 4
    lm_intermediate: int = 256              # 4 x lm_hidden in Pythia
    max_text_tokens: int = 48               # instruction tokens kept (byte-level tokenizer)
    # --- diffusion head (Diffusion Policy ConditionalUnet1D shape) ---
    horizon: int = 8                        # Ta, actions per chunk
    action_dim: int = 4                     # Da
    down_dims: tuple[int, ...] = (64, 128)  # UNet widths (Diffusion Policy: 256,512,1024)
    kernel_size: int = 5
    n_groups: int = 8                       # GroupNorm groups
    step_embed_dim: int = 64                # sinusoidal diffusion-step embedding width
    # --- noise schedule (diffusers) ---
    num_train_timesteps: int = 100          # T; Diffusion Policy uses 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True                # clip predicted x0 to [-1, 1] (actions are normalized)

    def __post_init__(self) -> None:
        if self.vision not in ("cnn", "vit"):
            raise ValueError(f"vision must be 'cnn' or 'vit', got {self.vision!r}")
        if self.vision == "cnn" and self.image_size % (2 ** len(self.cnn_channels)):
            raise ValueError(f"image_size {self.image_size} must be divisible by "
                             f"2^len(cnn_channels) = {2 ** len(self.cnn_channels)}")
        if self.vision == "vit" and self.image_size % self.vit_patch:
            raise ValueError(f"image_size {self.image_size} must be divisible by vit_patch")
        if self.lm_hidden % self.lm_heads:
            raise ValueError(f"lm_hidden {self.lm_hidden} must be divisible by lm_heads "
                             f"{self.lm_heads}")
        if self.horizon % (2 ** (len(self.down_dims) - 1)):
            raise ValueError(f"horizon (Ta) {self.horizon} must be divisible by "
                             f"2^(len(down_dims)-1) = {2 ** (len(self.down_dims) - 1)}")
        for name in ("num_cameras", "state_dim", "action_dim", "horizon", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"every down_dims entry must be divisible by n_groups "
                             f"{self.n_groups}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Load config/models/<name>.yaml (tiny, tinyvla_s, tinyvla_b, tinyvla_h)."""
        paths = [d / f"{name}.yaml" for d in preset_dirs() if (d / f"{name}.yaml").is_file()]
        if not paths:
            known = sorted({p.stem for d in preset_dirs() for p in d.glob("*.yaml")})
            raise ValueError(f"unknown model preset {name!r}; known: {known}")
        path = paths[0]
        data = yaml.safe_load(path.read_text()) or {}
        data.update(overrides)
        return cls.from_dict(data)


@dataclass(frozen=True)
class SamplerConfig:
    """Stochastic DDIM/DDPM sampling over the diffusers tables, with per-step log-probs.

    Only the last `stochastic_steps` (K') steps are stochastic and recorded: noise on every step
    ruins
    rollouts (DESIGN.md, measured on the toy). The same std floor is used to sample and to score.
    """

    scheduler: str = "ddim"                 # "ddim" (eta > 0) or "ddpm"
    num_inference_steps: int = 10           # K
    stochastic_steps: int = 3               # K', the last K' steps; DPPO fine-tunes the last few
    eta: float = 1.0                        # DDIM eta (1.0 = DDPM-like variance); unused by ddpm
    min_sampling_std: float = 0.1           # sigma floor when sampling (DPPO: 0.1)
    min_logprob_std: float = 0.1            # sigma floor when scoring; keep equal to sampling's
    noise_clip: float = 3.0                 # clip |z| of the sampling noise (0 = no clip)
    executed_steps: int = 0                 # executed, scored prefix (0 = Ta)
    init_noise_scale: float = 1.0           # x_K ~ N(0, s^2 I); < 1 moves the rollout's
    #   randomness from x_K (not scored, so not credited) to the K' scored steps

    def __post_init__(self) -> None:
        if self.scheduler not in ("ddim", "ddpm"):
            raise ValueError(f"scheduler must be 'ddim' or 'ddpm', got {self.scheduler!r}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0 <= self.stochastic_steps <= self.num_inference_steps:
            raise ValueError(f"stochastic_steps (K') must lie in [0, num_inference_steps="
                             f"{self.num_inference_steps}], got {self.stochastic_steps}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.min_sampling_std < 0 or self.min_logprob_std <= 0:
            raise ValueError("min_logprob_std must be > 0 (the final step has zero variance) and "
                             f"min_sampling_std >= 0, got {self.min_logprob_std}, "
                             f"{self.min_sampling_std}")
        if self.noise_clip < 0:
            raise ValueError(f"noise_clip must be >= 0, got {self.noise_clip}")
        if self.executed_steps < 0:
            raise ValueError(f"executed_steps must be >= 0, got {self.executed_steps}")
        if not 0 <= self.init_noise_scale <= 1:
            raise ValueError(f"init_noise_scale must lie in [0, 1], got {self.init_noise_scale}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SFTConfig:
    """Behaviour cloning of the diffusion head (epsilon prediction), the SFT starting point."""

    steps: int = 2000                       # optimizer steps
    batch_size: int = 64
    lr: float = 1e-3                        # AdamW; Diffusion Policy uses 1e-4 at larger scale
    weight_decay: float = 1e-6
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SFT {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"SFT lr must be > 0, got {self.lr}")
