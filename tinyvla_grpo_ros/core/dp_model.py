"""A LeRobot-shaped Diffusion Policy (ModelConfig.architecture "diffusion_policy"): the network of
LeRobot's DiffusionPolicy, built here so that its checkpoints import with parity.

    images (B, To*Nc, H, W, 3) uint8 ─ /255, per-camera mean/std, resize, center crop ─ ResNet-18
        trunk ─ spatial softmax (K keypoints) ─ Linear + ReLU ─> (B, To, Nc * 2K)   (one encoder
        per camera or one shared)
    state (B, To*Ds) ─ min/max to [-1, 1] ─> per step [state, camera 0 features, camera 1, ...],
        the To steps concatenated oldest first ─> cond (B, To * (Ds + Nc * 2K))
    x_k (B, Ta, Da), k ─ ConditionalUnet1D (core/model.py; FiLM scale+bias or bias only) ─> eps

No language: the instruction is ignored. To = n_obs_steps observation steps, one control step
apart (LeRobot's layout); the chunk starts at the oldest, so the executed actions start at index
To - 1 (ModelConfig.action_offset). The ResNet-18 trunk is torchvision's layout (children 0..7:
conv1, bn1, relu, maxpool, layer1..4); its norms are BatchNorm with frozen statistics (always
evaluated with the stored running mean and variance, in training too) or GroupNorm(C / 16, C), as
the source was trained.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .model import ConditionalUnet1D, Normalizer, Observation, checked_images


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with the source's running statistics, never updated (nn.BatchNorm2d names)."""

    def __init__(self, c: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


def _norm(c: int, kind: str) -> nn.Module:
    return FrozenBatchNorm2d(c) if kind == "batch" else nn.GroupNorm(c // 16, c)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _norm(c_out, norm)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _norm(c_out, norm)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                        _norm(c_out, norm)) \
            if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def resnet18_trunk(norm: str) -> nn.Sequential:
    """ResNet-18 without its pooling and classifier: (B, 3, H, W) -> (B, 512, H/32, W/32)."""
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), _norm(64, norm), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    c = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers.append(nn.Sequential(BasicBlock(c, width, stride, norm),
                                    BasicBlock(width, width, 1, norm)))
        c = width
    return nn.Sequential(*layers)


class SpatialSoftmax(nn.Module):
    """K keypoints: a 1x1 conv to K maps, a softmax over each map's cells, the expected (x, y)
    on a grid from -1 to 1 (x along the width, rows along the height)."""

    def __init__(self, c: int, h: int, w: int, keypoints: int) -> None:
        super().__init__()
        self.h, self.w, self.k = h, w, keypoints
        self.nets = nn.Conv2d(c, keypoints, 1)
        gx, gy = np.meshgrid(np.linspace(-1.0, 1.0, w), np.linspace(-1.0, 1.0, h))
        grid = np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)
        self.register_buffer("pos_grid", torch.from_numpy(grid).float())     # (h*w, 2)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:     # (B, C, h, w) -> (B, K, 2)
        attn = self.nets(fmap).reshape(-1, self.h * self.w).softmax(-1)
        return (attn @ self.pos_grid).view(-1, self.k, 2)


class RgbEncoder(nn.Module):
    """One camera's image (B, 3, S, S) normalized -> features (B, 2K)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = resnet18_trunk(cfg.dp_backbone_norm)
        side = cfg.dp_crop or cfg.dp_resize or cfg.image_size
        with torch.no_grad():
            c, h, w = self.backbone(torch.zeros(1, 3, side, side)).shape[1:]
        self.pool = SpatialSoftmax(c, h, w, cfg.dp_keypoints)
        self.out = nn.Linear(2 * cfg.dp_keypoints, 2 * cfg.dp_keypoints)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.out(torch.flatten(self.pool(self.backbone(x)), start_dim=1)))


class DPNormalizer(Normalizer):
    """Actions min/max to [-1, 1]; state min/max to [-1, 1] (LeRobot's MIN_MAX); each camera's
    pixels (in [0, 1]) by its mean/std per channel (MEAN_STD)."""

    EPS = 1e-8

    def __init__(self, action_dim: int, state_dim: int, num_cameras: int) -> None:
        super().__init__(action_dim, state_dim)
        self.register_buffer("state_min", -torch.ones(state_dim))
        self.register_buffer("state_max", torch.ones(state_dim))
        self.register_buffer("image_mean", torch.zeros(num_cameras, 3))
        self.register_buffer("image_std", torch.ones(num_cameras, 3))

    @torch.no_grad()
    def fit(self, actions: torch.Tensor, states: torch.Tensor) -> None:
        super().fit(actions, states)
        self.state_min.copy_(states.min(0).values)
        self.state_max.copy_(states.max(0).values)
        self.image_mean.fill_(0.5)
        self.image_std.fill_(0.5)

    def normalize_state(self, s: torch.Tensor) -> torch.Tensor:
        span = self.state_max - self.state_min
        span = torch.where(span == 0, torch.full_like(span, self.EPS), span)
        return 2 * (s - self.state_min) / span - 1

    def normalize_images(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Nc, 3, H, W) in [0, 1] -> per camera (x - mean) / (std + eps)."""
        return (x - self.image_mean[None, :, :, None, None]) / (
            self.image_std[None, :, :, None, None] + self.EPS)


class DiffusionPolicyModel(nn.Module):
    """The network: `encode(obs) -> cond` once a chunk, `forward(x_k, t, cond) -> eps` a step."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.architecture != "diffusion_policy":
            raise ValueError(f"DiffusionPolicyModel needs architecture 'diffusion_policy', got "
                             f"{cfg.architecture!r}")
        self.config = cfg
        self.normalizer = DPNormalizer(cfg.action_dim, cfg.state_dim, cfg.num_cameras)
        n_enc = cfg.num_cameras if cfg.dp_separate_encoders else 1
        self.rgb_encoder = nn.ModuleList([RgbEncoder(cfg) for _ in range(n_enc)])
        self.cond_dim = cfg.n_obs_steps * (cfg.state_dim + cfg.num_cameras * 2 * cfg.dp_keypoints)
        self.head = ConditionalUnet1D(cfg, self.cond_dim)

    def encode(self, obs: Observation) -> torch.Tensor:
        """Observation -> condition (B, To * (Ds + Nc * 2K)): per observation step, oldest
        first, [state, camera features in camera order]."""
        cfg = self.config
        imgs = checked_images(obs, cfg)
        To, Nc = cfg.n_obs_steps, cfg.num_cameras
        B, _, H, W, _ = imgs.shape
        if obs.state.shape[1:] != (To * cfg.state_dim,):
            raise ValueError(f"state must be (B, To * Ds = {To} x {cfg.state_dim}), got "
                             f"{tuple(obs.state.shape)}")
        x = imgs.reshape(B * To, Nc, H, W, 3).permute(0, 1, 4, 2, 3).float().div(255.0)
        if (H, W) != (cfg.image_size, cfg.image_size):               # x: (B*To, Nc, 3, H, W)
            x = F.interpolate(x.reshape(B * To * Nc, 3, H, W), size=(cfg.image_size,) * 2,
                              mode="bilinear", antialias=True, align_corners=False
                              ).reshape(B * To, Nc, 3, cfg.image_size, cfg.image_size)
        x = self.normalizer.normalize_images(x)
        side = cfg.dp_resize or cfg.image_size
        if side != cfg.image_size:                          # LeRobot's Resize, then its crop
            x = F.interpolate(x.reshape(-1, 3, cfg.image_size, cfg.image_size), size=(side,) * 2,
                              mode="bilinear", antialias=True, align_corners=False
                              ).reshape(B * To, Nc, 3, side, side)
        if cfg.dp_crop and cfg.dp_crop < side:
            top = int(round((side - cfg.dp_crop) / 2.0))
            x = x[..., top:top + cfg.dp_crop, top:top + cfg.dp_crop]
        if len(self.rgb_encoder) == 1:
            feats = self.rgb_encoder[0](x.reshape(B * To * Nc, *x.shape[2:]))
        else:
            feats = torch.stack([enc(x[:, i]) for i, enc in enumerate(self.rgb_encoder)], 1)
        feats = feats.reshape(B, To, -1)                                    # (B, To, Nc * 2K)
        state = self.normalizer.normalize_state(
            obs.state.to(feats.dtype).reshape(B, To, cfg.state_dim))
        return torch.cat([state, feats], dim=-1).reshape(B, -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.head(x, t, cond)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
