"""Configs as documented dataclasses that check themselves.

Shape vocabulary (everywhere in core/): B batch, G group size, K denoising steps, K' fine-tuned
(stochastic) steps, Ta action horizon, Da action dim, Ds state dim, To observation steps (1 here),
Nc cameras, H x W image size.

`ModelConfig` describes the network, `SamplerConfig` the stochastic diffusion sampler, `GRPOConfig`
the learner. Model and sampler configs load from and save to plain dicts (JSON / YAML); unknown
keys are an error, never silently ignored. Sampler and learner fields are recipe settings
(core/recipe.py): each carries its help, its range and the adopted value as its default.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .recipe import check_ranges, setting


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
    film_scale: bool = True                 # FiLM scale and bias (False: bias only)
    # --- architecture: "tinyvla" (the fields above) or "diffusion_policy" (LeRobot's
    # DiffusionPolicy: ResNet-18 + spatial-softmax per camera, state min/max, no language) ---
    architecture: str = "tinyvla"
    dp_keypoints: int = 32                  # spatial-softmax keypoints per camera
    dp_backbone_norm: str = "batch"         # ResNet-18 norms: "batch" (frozen stats) or "group"
    dp_separate_encoders: bool = True       # one image encoder per camera
    dp_resize: int = 0                      # LeRobot's resize_shape: side the normalized
    #                                         images are resized to (bilinear, antialiased),
    #                                         before the crop (0: none)
    dp_crop: int = 0                        # center crop side before the encoder (0: none)
    n_obs_steps: int = 1                    # To: frames and states conditioned on, one control
    #                                         step apart, oldest first (diffusion_policy only);
    #                                         the executed actions then start at chunk index To-1
    # --- what an imported TinyVLA run needs (importers/tinyvla.py); the defaults are the
    # package's own model ---
    vit_intermediate: int = 0               # CLIP MLP width (0: 4 x vit_hidden)
    vit_patch_only: bool = False            # drop the CLS token (LLaVA's "patch" features)
    projector: str = "linear"               # ViT -> LM: "linear" or "mlp<N>x_gelu"
    image_mean: tuple[float, ...] = ()      # per-channel pixel mean/std on [0, 1] (CLIP's);
    image_std: tuple[float, ...] = ()       # empty: pixels scaled to [-1, 1]
    image_pad: str = "black"                # a frame padded square (image_fit pad) gets black
    #                                         or "mean": image_mean's colour (LLaVA's
    #                                         expand2square)
    image_resample: str = "area"            # frame -> image_size: "area" (cv2; linear when
    #                                         enlarging) or "bicubic" (PIL's, CLIP's processor)
    tokenizer: str = "bytes"                # "bytes" (built in) or "bpe" (the checkpoint's
    #                                         tokenizer.json, e.g. Pythia's)
    prompt: str = ""                        # template with <image> and {instruction} ("":
    #                                         images, then BOS instruction EOS)
    text_pad_id: int = -1                   # prompt tokens with this id are masked (-1: none)
    lm_vocab_size: int = 0                  # 0: the byte tokenizer's vocabulary
    lm_rotary_pct: float = 0.25
    lm_rotary_base: int = 10000
    lm_norm_eps: float = 1e-5
    lm_max_positions: int = 0               # 0: the tokens the model can be given
    cond_pooling: str = "masked_mean"       # "masked_mean" + state, or "tinyvla": mean over
    #                                         every token, LayerNorm, state, Linear combine
    step_embed_dtype: str = "float32"       # "bfloat16": the step embedding computed in bf16

    def __post_init__(self) -> None:
        if self.projector != "linear" and not re.fullmatch(r"mlp[1-9]x_gelu", self.projector):
            raise ValueError(f"projector must be 'linear' or 'mlp<N>x_gelu', got "
                             f"{self.projector!r}")
        for name, allowed in (("tokenizer", ("bytes", "bpe")), ("image_pad", ("black", "mean")),
                              ("image_resample", ("area", "bicubic")),
                              ("cond_pooling", ("masked_mean", "tinyvla")),
                              ("step_embed_dtype", ("float32", "bfloat16"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r}")
        if len(self.image_mean) != len(self.image_std) or len(self.image_mean) not in (0, 3):
            raise ValueError("image_mean and image_std must both be empty or both have 3 values")
        if self.prompt and ("<image>" not in self.prompt or "{instruction}" not in self.prompt):
            raise ValueError("prompt must contain <image> and {instruction}, got "
                             f"{self.prompt!r}")
        if (self.tokenizer == "bpe") != (self.lm_vocab_size > 0):
            raise ValueError("a bpe tokenizer needs lm_vocab_size, and lm_vocab_size needs the "
                             "bpe tokenizer")
        if self.architecture not in ("tinyvla", "diffusion_policy"):
            raise ValueError(f"architecture must be 'tinyvla' or 'diffusion_policy', got "
                             f"{self.architecture!r}")
        if self.architecture == "diffusion_policy":
            if self.dp_backbone_norm not in ("batch", "group"):
                raise ValueError("dp_backbone_norm must be 'batch' or 'group', got "
                                 f"{self.dp_backbone_norm!r}")
            side = self.dp_resize or self.image_size
            if self.dp_resize < 0 or not 0 <= self.dp_crop <= side or self.dp_keypoints < 1:
                raise ValueError(f"dp_resize must be >= 0, dp_crop in [0, {side}] (the resized "
                                 f"side), dp_keypoints >= 1; got {self.dp_resize}, "
                                 f"{self.dp_crop}, {self.dp_keypoints}")
        elif self.n_obs_steps != 1:
            raise ValueError(f"n_obs_steps {self.n_obs_steps}: observation history is "
                             "supported by the diffusion_policy architecture only")
        elif self.vision not in ("cnn", "vit"):
            raise ValueError(f"vision must be 'cnn' or 'vit', got {self.vision!r}")
        tinyvla = self.architecture == "tinyvla"
        if tinyvla and self.vision == "cnn" and self.image_size % (2 ** len(self.cnn_channels)):
            raise ValueError(f"image_size {self.image_size} must be divisible by "
                             f"2^len(cnn_channels) = {2 ** len(self.cnn_channels)}")
        if tinyvla and self.vision == "vit" and self.image_size % self.vit_patch:
            raise ValueError(f"image_size {self.image_size} must be divisible by vit_patch")
        if self.lm_hidden % self.lm_heads:
            raise ValueError(f"lm_hidden {self.lm_hidden} must be divisible by lm_heads "
                             f"{self.lm_heads}")
        if self.horizon % (2 ** (len(self.down_dims) - 1)):
            raise ValueError(f"horizon (Ta) {self.horizon} must be divisible by "
                             f"2^(len(down_dims)-1) = {2 ** (len(self.down_dims) - 1)}")
        if not 1 <= self.n_obs_steps <= self.horizon:
            raise ValueError(f"n_obs_steps must lie in [1, horizon={self.horizon}], got "
                             f"{self.n_obs_steps}")
        for name in ("num_cameras", "state_dim", "action_dim", "horizon", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"every down_dims entry must be divisible by n_groups "
                             f"{self.n_groups}")

    @property
    def action_offset(self) -> int:
        """Chunk index of the first executed action: the chunk starts at the oldest observation
        (LeRobot's layout), so with To observations the current step is index To - 1."""
        return self.n_obs_steps - 1

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
    ruins rollouts (docs/DESIGN.md). The same std floor is used to sample and to score. A
    checkpoint stores its sampler config; the nodes and the bench override the fields of
    `RECIPE` (the exploration settings), the others describe how the head samples.
    """

    scheduler: str = setting("ddim", "diffusers scheduler of the denoising chain",
                             choices=("ddim", "ddpm"))
    num_inference_steps: int = setting(10, "K, denoising steps per chunk", lo=1, hi=1000)
    stochastic_steps: int = setting(3, "K', the last K' denoising steps are stochastic, scored "
                                    "and fine-tuned (DPPO fine-tunes the last few)", lo=0,
                                    hi=1000)
    eta: float = setting(1.0, "DDIM eta (1.0 = DDPM-like variance); unused by ddpm", lo=0.0,
                         hi=10.0)
    min_sampling_std: float = setting(0.1, "std floor of a stochastic step when sampling "
                                      "(DPPO: 0.1)", lo=0.0, hi=10.0)
    min_logprob_std: float = setting(0.1, "std floor when scoring (> 0: the last step has zero "
                                     "variance); keep equal to min_sampling_std", lo=1e-6,
                                     hi=10.0)
    noise_clip: float = setting(3.0, "clip |z| of the sampling noise (0 = no clip)", lo=0.0,
                                hi=100.0)
    executed_steps: int = setting(0, "actions executed and scored per chunk (0 = the whole "
                                  "chunk, Ta)", lo=0, hi=4096)
    init_noise_scale: float = setting(1.0, "x_K ~ N(0, s^2 I); 1 = the distribution the head "
                                      "was trained on", lo=0.0, hi=1.0)
    frozen_prefix: bool = setting(True, "exact trust region: the K - K' unscored denoising "
                                  "steps run a frozen copy of the SFT policy, so training moves "
                                  "only the scored steps (off: the trained weights act on every "
                                  "step, as before 2026-12-05)")

    RECIPE: ClassVar[tuple[str, ...]] = ("stochastic_steps", "min_sampling_std",
                                         "min_logprob_std", "noise_clip", "executed_steps",
                                         "init_noise_scale", "frozen_prefix")
    # How fine-tuning treats the SFT policy, not how the SFT policy samples: a checkpoint's
    # stored value is not the default of these; the adopted recipe's is (checkpoint.py).
    ADOPTED: ClassVar[tuple[str, ...]] = ("frozen_prefix",)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.stochastic_steps > self.num_inference_steps:
            raise ValueError(f"stochastic_steps (K') must lie in [0, num_inference_steps="
                             f"{self.num_inference_steps}], got {self.stochastic_steps}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GRPOConfig:
    """The learner's recipe (GRPO with PPO-style clipping over the K' scored denoising steps).

    The defaults are the adopted recipe, measured in docs/RESULTS.md; learner_node's parameters
    and bench/bench_learning.py's options are derived from these fields."""

    group_size: int = setting(8, "G, rollouts per initial state (a group)", lo=2, hi=1024)
    lr: float = setting(1e-3, "Adam learning rate of the LoRA tensors", lo=1e-8, hi=1.0)
    base_lr_scale: float = setting(0.03, "learning rate of trained base tensors (head, norms, "
                                   "blocks) as a fraction of lr: Adam moves a full weight's "
                                   "output by lr x fan-in, a LoRA B's by lr x rank",
                                   lo=1e-6, hi=100.0)
    epochs: int = setting(4, "passes over each batch of groups (PPO-style reuse)", lo=1,
                          hi=100)
    minibatch_size: int = setting(128, "chunks per optimizer step", lo=1, hi=1_000_000)
    micro_batch_size: int = setting(128, "chunks per forward/backward; memory only: the "
                                    "gradient is the same", lo=1, hi=1_000_000)
    clip_low: float = setting(0.2, "PPO clip below 1 (eps_low)", lo=1e-6, hi=0.999)
    clip_high: float = setting(0.28, "PPO clip above 1 (eps_high; DAPO's clip-higher)",
                               lo=1e-6, hi=10.0)
    denoise_discount: float = setting(1.0, "gamma over the denoising steps (DPPO: 0.99); "
                                      "1 = off", lo=0.01, hi=1.0)
    kl_coef: float = setting(0.0, "beta of the k3 KL to the SFT policy (adapters disabled; "
                             "preset adapters only); 0 = off", lo=0.0, hi=100.0)
    target_kl: float = setting(0.05, "stop an update early when a minibatch's approximate KL "
                               "exceeds 1.5 x this (0 = off)", lo=0.0, hi=100.0)
    correction_weight: float = setting(0.1, "weight of the denoising loss on the operator's "
                                       "corrected chunks of the task (takeovers; 0 = off)",
                                       lo=0.0, hi=1000.0)
    correction_window: int = setting(4096, "corrected chunks per task that loss draws from "
                                     "(the newest; bounds the learner's memory)", lo=1,
                                     hi=10_000_000)
    warmup_steps: int = setting(10, "linear learning-rate warm-up over a task's first "
                                "optimizer steps", lo=0, hi=1_000_000)
    max_grad_norm: float = setting(1.0, "gradient clipping norm", lo=1e-6, hi=1e6)
    adv_eps: float = setting(1e-6, "epsilon of the advantage normalization", lo=0.0, hi=1.0)
    device: str = setting("auto", "torch device of the learner: auto (cuda when available), "
                          "cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        check_ranges(self)
        resolve_device(self.device)

    def loss_cfg(self):
        from .grpo import GRPOLossConfig
        return GRPOLossConfig(self.clip_low, self.clip_high, self.denoise_discount, self.kl_coef)

    def resolved_device(self):
        return resolve_device(self.device)


@dataclass(frozen=True)
class PolicyNodeConfig:
    """How policy_node turns observations into commands on the arm (its own parameters)."""

    camera_topics: tuple[str, ...] = setting(("image_raw",), "camera image topics, in the "
                                             "model's camera order")
    command_mode: str = setting("chunk", "chunk: publish ActionChunks that a simulator executes;"
                                " joint_trajectory: command a joint_trajectory_controller",
                                choices=("chunk", "joint_trajectory"))
    controller_topic: str = setting("/joint_trajectory_controller/joint_trajectory",
                                    "JointTrajectory topic in joint_trajectory mode")
    control_rate_hz: float = setting(80.0, "rate at which the arm executes a chunk's actions",
                                     lo=1.0, hi=2000.0)
    decision_period_s: float = setting(-1.0, "min time between decisions (-1: executed_steps "
                                       "/ control_rate_hz; 0: every fresh image)", lo=-1.0,
                                       hi=60.0)
    pipeline_lead_s: float = setting(0.05, "chunk pipelining: start the next decision this "
                                     "long before the current chunk ends, from the newest "
                                     "observation; its chunk is stamped to start when the "
                                     "current one ends (0 = off: decide when it ends; ignored "
                                     "with decision_period_s 0)", lo=0.0, hi=60.0)
    stale_after_s: float = setting(1.0, "max age of the images and joint states a decision "
                                   "uses, by stamp and by arrival", lo=0.01, hi=60.0)
    future_tolerance_s: float = setting(0.5, "max time an input's stamp may lie ahead of this "
                                        "node's clock (unsynchronized clocks)", lo=0.0, hi=60.0)
    history_gap_s: float = setting(0.1, "a policy with observation history (n_obs_steps > 1): "
                                   "max time between an earlier control step and the frame or "
                                   "joint reading stamped nearest to it", lo=0.0, hi=60.0)
    image_fit: str = setting("crop", "how a non-square camera frame becomes the model's square "
                             "input: center crop or pad (as the SFT data were made)",
                             choices=("crop", "pad"))
    max_delta_per_step: float = setting(0.0, "max change of an action between control steps "
                                        "(0 = off)", lo=0.0, hi=1e6)
    watchdog_s: float = setting(1.0, "hold the arm when no fresh chunk went out for this long "
                                "while an episode runs (0 = off; above the model's worst "
                                "decision time)", lo=0.0, hi=60.0)
    swap_between: str = setting("groups", "apply new adapter versions between groups (a group "
                                "never mixes versions) or between chunks",
                                choices=("groups", "chunks"))
    adapter_update_topic: str = setting("adapter_update", "AdapterUpdate topic (absolute when "
                                        "one learner serves several robots)")
    seed: int = setting(0, "sampling seed; evaluation episodes draw x_K from (seed, init "
                        "state, chunk index), the same for every version", lo=0, hi=2**31 - 1)
    enabled: bool = setting(True, "command the arm at all (also the enable service)")
    device: str = setting("auto", "torch device: auto (cuda when available), cpu, cuda or "
                          "cuda:N")

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.camera_topics:
            raise ValueError("camera_topics must name at least one camera")
        resolve_device(self.device)


def resolve_device(name: str):
    """'auto' -> cuda when available, else cpu; anything else must be a torch device string."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from e


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
