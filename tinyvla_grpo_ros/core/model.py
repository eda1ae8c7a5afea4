"""TinyVLA-style policy: vision encoder + Pythia-style LM + FiLM 1-D UNet diffusion head.

Notation: B batch, Nc cameras, H x W image, Ds state dim, L text tokens, Ta horizon, Da action dim.

    images (B, Nc, H, W, 3) uint8 ─ vision encoder ─> image tokens (B, Nc*P, D) ┐
    instruction ─ byte tokenizer ─ LM embeddings ─> text tokens (B, L, D)       ├ GPTNeoX, mean
    state (B, Ds) ─ normalize ─────────────────────────────────────── concat with (B, D) ─> cond
    x_k (B, Ta, Da), k ─ ConditionalUnet1D(FiLM on [step embedding, cond]) ─> eps (B, Ta, Da)

The head follows Diffusion Policy's ConditionalUnet1D (Chi et al., 2023); the backbone follows
TinyVLA (Wen et al., 2024): a LLaVA-style VLM whose pooled features condition a diffusion head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, GPTNeoXConfig, GPTNeoXModel

from . import tokenizer
from .config import ModelConfig


@dataclass
class Observation:
    """A batch of observations, as the policy consumes them."""

    images: torch.Tensor          # (B, To * Nc, H, W, 3) uint8, time-major (To: n_obs_steps)
    state: torch.Tensor           # (B, To * Ds) float, robot units, oldest step first
    instruction: list[str]        # B strings

    def to(self, device: torch.device | str) -> Observation:
        return Observation(self.images.to(device), self.state.to(device), self.instruction)

    def repeat(self, n: int) -> Observation:
        """Each sample n times in a row: (B, ...) -> (B*n, ...)."""
        return Observation(self.images.repeat_interleave(n, 0), self.state.repeat_interleave(n, 0),
                           [s for s in self.instruction for _ in range(n)])

    def select(self, idx: torch.Tensor) -> Observation:
        """The samples at indices idx (n,), in that order."""
        return Observation(self.images[idx], self.state[idx],
                           [self.instruction[i] for i in idx.tolist()])

    def __len__(self) -> int:
        return self.images.shape[0]


class Normalizer(nn.Module):
    """Actions to [-1, 1] by min/max (Diffusion Policy); state to zero mean, unit std."""

    def __init__(self, action_dim: int, state_dim: int) -> None:
        super().__init__()
        self.register_buffer("action_min", -torch.ones(action_dim))
        self.register_buffer("action_max", torch.ones(action_dim))
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    @torch.no_grad()
    def fit(self, actions: torch.Tensor, states: torch.Tensor) -> None:
        """actions (N, Da), states (N, Ds) from demonstrations."""
        lo, hi = actions.min(0).values, actions.max(0).values
        pad = torch.clamp((hi - lo) * 0.05, min=1e-3)      # headroom so GRPO can go past demos
        self.action_min.copy_(lo - pad)
        self.action_max.copy_(hi + pad)
        self.state_mean.copy_(states.mean(0))
        self.state_std.copy_(states.std(0).clamp(min=1e-3))

    def normalize_action(self, a: torch.Tensor) -> torch.Tensor:
        return 2 * (a - self.action_min) / (self.action_max - self.action_min) - 1

    def unnormalize_action(self, a: torch.Tensor) -> torch.Tensor:
        return (a + 1) / 2 * (self.action_max - self.action_min) + self.action_min

    def normalize_state(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.state_mean) / self.state_std


class CNNEncoder(nn.Module):
    """Stride-2 conv stages; each cell of the last feature map is one image token, plus one token
    of spatial-softmax keypoints (expected x, y per channel; Levine et al. 2016, as in Diffusion
    Policy's vision encoder), which keeps *where* things are after the LM's pooling."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c in cfg.cnn_channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(cfg.cnn_channels)
        self.num_tokens = side * side + 1
        self.pos = nn.Parameter(torch.randn(1, side * side, c_in) * 0.02)
        self.proj = nn.Linear(c_in, cfg.lm_hidden)
        self.keypoints = nn.Conv2d(c_in, c_in, 1)
        self.keypoint_proj = nn.Linear(2 * c_in, cfg.lm_hidden)
        coords = torch.linspace(-1, 1, side)
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("grid", torch.stack([gx.flatten(), gy.flatten()], -1),
                             persistent=False)                             # (h*w, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, 3, H, W) -> (B, P, D)
        fmap = self.net(x)                                 # (B, C, h, w)
        f = fmap.flatten(2).transpose(1, 2)                # (B, h*w, C)
        attn = self.keypoints(fmap).flatten(2).softmax(-1)  # (B, C, h*w)
        kp = (attn @ self.grid).flatten(1)                 # (B, 2C) expected (x, y) per channel
        return torch.cat([self.proj(f + self.pos), self.keypoint_proj(kp)[:, None]], dim=1)


class ViTEncoder(nn.Module):
    """CLIP ViT built from a config (random init; users load their SFT weights into it), its
    tokens (all, or the patches only) projected to the LM width by a linear layer or an MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vcfg = CLIPVisionConfig(hidden_size=cfg.vit_hidden, num_hidden_layers=cfg.vit_layers,
                                num_attention_heads=cfg.vit_heads,
                                intermediate_size=cfg.vit_intermediate or 4 * cfg.vit_hidden,
                                image_size=cfg.image_size, patch_size=cfg.vit_patch)
        self.vit = CLIPVisionModel(vcfg)
        self.patch_only = cfg.vit_patch_only
        self.num_tokens = (cfg.image_size // cfg.vit_patch) ** 2 + (0 if self.patch_only else 1)
        if cfg.projector == "linear":
            self.proj = nn.Linear(cfg.vit_hidden, cfg.lm_hidden)
        else:                                        # mlp<N>x_gelu
            layers: list[nn.Module] = [nn.Linear(cfg.vit_hidden, cfg.lm_hidden)]
            for _ in range(int(cfg.projector[3:-6]) - 1):
                layers += [nn.GELU(), nn.Linear(cfg.lm_hidden, cfg.lm_hidden)]
            self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, 3, H, W) -> (B, P, D)
        h = self.vit(pixel_values=x).last_hidden_state
        return self.proj(h[:, 1:] if self.patch_only else h)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dim, self.dtype = dim, dtype

    def forward(self, t: torch.Tensor) -> torch.Tensor:   # (B,) -> (B, dim)
        half = self.dim // 2
        if self.dtype == torch.bfloat16:         # TinyVLA computes the embedding in bf16
            freq = torch.exp(torch.arange(half, device=t.device, dtype=self.dtype)
                             * -(math.log(10000) / (half - 1)))
            arg = t[:, None] * freq[None]
            return torch.cat([arg.sin(), arg.cos()], dim=-1).float()
        freq = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
        arg = t.float()[:, None] * freq[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, groups: int) -> None:
        super().__init__(nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.GroupNorm(groups, c_out),
                         nn.Mish())


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; FiLM (per-channel scale and bias from the condition; bias only with
    film_scale False) between them."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, k: int, groups: int,
                 film_scale: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(c_in, c_out, k, groups),
                                     Conv1dBlock(c_out, c_out, k, groups)])
        self.film_scale = film_scale
        self.film = nn.Linear(cond_dim, (2 if film_scale else 1) * c_out)
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](x)                                        # (B, C, Ta)
        if self.film_scale:
            scale, bias = self.film(F.mish(cond)).unsqueeze(-1).chunk(2, dim=1)
            h = self.blocks[1](scale * h + bias)
        else:
            h = self.blocks[1](h + self.film(F.mish(cond)).unsqueeze(-1))
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion Policy's 1-D temporal UNet with FiLM conditioning, predicting eps."""

    def __init__(self, cfg: ModelConfig, global_cond_dim: int) -> None:
        super().__init__()
        dsed, k, g, fs = cfg.step_embed_dim, cfg.kernel_size, cfg.n_groups, cfg.film_scale
        emb_dtype = getattr(torch, cfg.step_embed_dtype)
        self.step_encoder = nn.Sequential(SinusoidalPosEmb(dsed, emb_dtype),
                                          nn.Linear(dsed, 4 * dsed), nn.Mish(),
                                          nn.Linear(4 * dsed, dsed))
        cond_dim = dsed + global_cond_dim
        dims = [cfg.action_dim, *cfg.down_dims]
        pairs = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(nn.ModuleList([
                ConditionalResidualBlock1D(a, b, cond_dim, k, g, fs),
                ConditionalResidualBlock1D(b, b, cond_dim, k, g, fs),
                nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity()]))
        mid = dims[-1]
        self.mid = nn.ModuleList([ConditionalResidualBlock1D(mid, mid, cond_dim, k, g, fs)
                                  for _ in range(2)])
        self.up = nn.ModuleList()
        for a, b in reversed(pairs[1:]):          # every up level undoes one down-sampling
            self.up.append(nn.ModuleList([
                ConditionalResidualBlock1D(2 * b, a, cond_dim, k, g, fs),
                ConditionalResidualBlock1D(a, a, cond_dim, k, g, fs),
                nn.ConvTranspose1d(a, a, 4, 2, 1)]))
        start = cfg.down_dims[0]
        self.final = nn.Sequential(Conv1dBlock(start, start, k, g),
                                   nn.Conv1d(start, cfg.action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, Ta, Da), t (B,) int timesteps, cond (B, C) -> eps (B, Ta, Da)."""
        c = torch.cat([self.step_encoder(t), cond], dim=-1)
        h, skips = x.transpose(1, 2), []                              # (B, Da, Ta)
        for res1, res2, down in self.down:
            h = res2(res1(h, c), c)
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, c)
        for res1, res2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(res2(res1(h, c), c))
        return self.final(h).transpose(1, 2)


def checked_images(obs: Observation, cfg: ModelConfig) -> torch.Tensor:
    """obs.images, refused by shape unless (B, To * Nc, H, W, 3) with the model's observation
    steps and camera count (time-major: the oldest step's cameras first)."""
    imgs, n = obs.images, cfg.n_obs_steps * cfg.num_cameras
    if imgs.dim() != 5 or imgs.shape[1] != n or imgs.shape[-1] != 3:
        what = f"To * Nc = {cfg.n_obs_steps} x {cfg.num_cameras}" if cfg.n_obs_steps > 1 \
            else f"Nc={cfg.num_cameras}"
        raise ValueError(f"images must be (B, {what}, H, W, 3) uint8, got {tuple(imgs.shape)}")
    return imgs


class TinyVLAPolicy(nn.Module):
    """The network: `encode(obs) -> cond` once a chunk, `forward(x_k, t, cond) -> eps` a step."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.normalizer = Normalizer(cfg.action_dim, cfg.state_dim)
        self.vision = CNNEncoder(cfg) if cfg.vision == "cnn" else ViTEncoder(cfg)
        self.camera_embed = nn.Parameter(torch.zeros(cfg.num_cameras, 1, cfg.lm_hidden))
        n_pos = cfg.num_cameras * self.vision.num_tokens + cfg.max_text_tokens
        lcfg = GPTNeoXConfig(vocab_size=cfg.lm_vocab_size or tokenizer.VOCAB_SIZE,
                             hidden_size=cfg.lm_hidden, num_hidden_layers=cfg.lm_layers,
                             num_attention_heads=cfg.lm_heads,
                             intermediate_size=cfg.lm_intermediate,
                             max_position_embeddings=cfg.lm_max_positions or n_pos,
                             rotary_pct=cfg.lm_rotary_pct, rotary_emb_base=cfg.lm_rotary_base,
                             layer_norm_eps=cfg.lm_norm_eps, use_parallel_residual=True)
        self.lm = GPTNeoXModel(lcfg)
        D = cfg.lm_hidden
        if cfg.cond_pooling == "tinyvla":
            self.cond_dim = D
            self.head = ConditionalUnet1D(cfg, D)
            self.head.norm_after_pool = nn.LayerNorm(D)
            self.head.combine = nn.Linear(D + cfg.state_dim, D)
        else:
            self.cond_dim = D + cfg.state_dim
            self.head = ConditionalUnet1D(cfg, self.cond_dim)
        # a prompt template (imported models): its text is tokenized around the image tokens;
        # a bpe tokenizer comes from the checkpoint's tokenizer.json (attach_tokenizer)
        self.prompt = tokenizer.PromptText(cfg.prompt) \
            if cfg.prompt and cfg.tokenizer == "bytes" else None

    def attach_tokenizer(self, tokenizer_json: str) -> None:
        """The BPE tokenizer (tokenizer.json text) a `tokenizer: bpe` model needs."""
        self.prompt = tokenizer.PromptText(self.config.prompt or "<image>{instruction}",
                                           tokenizer_json)

    def pixels(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B*Nc, H, W, 3) uint8 -> (B*Nc, 3, S, S) float, normalized as the encoder was
        trained."""
        cfg = self.config
        x = imgs.permute(0, 3, 1, 2).float()
        if cfg.image_mean:
            mean = torch.tensor(cfg.image_mean, device=x.device)[:, None, None]
            std = torch.tensor(cfg.image_std, device=x.device)[:, None, None]
            x = (x / 255.0 - mean) / std
        else:
            x = x.div(127.5).sub(1.0)
        if x.shape[-2:] != (cfg.image_size, cfg.image_size):
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return x

    def _prompt_tokens(self, instructions: list[str], img_tok: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """[text before, image tokens, text after] per row; rows of different lengths are
        right-padded with zero embeddings, masked (LLaVA's batching)."""
        if self.prompt is None:
            raise ValueError("this model's tokenizer is 'bpe' but none is attached: load it "
                             "with load_checkpoint (the checkpoint's tokenizer.json)")
        emb, pad = self.lm.get_input_embeddings(), self.config.text_pad_id
        dev = img_tok.device
        rows, masks = [], []
        for i, text in enumerate(instructions):
            a, b = (torch.tensor(ids, dtype=torch.long, device=dev)
                    for ids in self.prompt.split(text))
            rows.append(torch.cat([emb(a), img_tok[i], emb(b)]))
            masks.append(torch.cat([a != pad, torch.ones(img_tok.shape[1], dtype=torch.bool,
                                                         device=dev), b != pad]))
        n = max(len(r) for r in rows)
        tokens = torch.stack([F.pad(r, (0, 0, 0, n - len(r))) for r in rows])
        attn = torch.stack([F.pad(m, (0, n - len(m))) for m in masks]).long()
        return tokens, attn

    def encode(self, obs: Observation) -> torch.Tensor:
        """Observation -> condition (B, cond_dim) for the diffusion head."""
        cfg = self.config
        imgs = checked_images(obs, cfg)
        B, Nc, H, W, _ = imgs.shape
        x = self.pixels(imgs.reshape(B * Nc, H, W, 3))
        img_tok = self.vision(x).reshape(B, Nc, -1, cfg.lm_hidden) + self.camera_embed
        img_tok = img_tok.reshape(B, -1, cfg.lm_hidden)                       # (B, Nc*P, D)
        if cfg.prompt or cfg.tokenizer == "bpe":
            tokens, attn = self._prompt_tokens(list(obs.instruction), img_tok)
        else:
            ids, mask = tokenizer.encode(obs.instruction, cfg.max_text_tokens)
            ids, mask = ids.to(imgs.device), mask.to(imgs.device)
            txt_tok = self.lm.get_input_embeddings()(ids)                     # (B, L, D)
            tokens = torch.cat([img_tok, txt_tok], dim=1)
            attn = torch.cat([torch.ones(B, img_tok.shape[1], dtype=mask.dtype,
                                         device=mask.device), mask], dim=1)
        h = self.lm(inputs_embeds=tokens, attention_mask=attn).last_hidden_state  # (B, N, D)
        if cfg.cond_pooling == "tinyvla":       # every position, LayerNorm, state, combine
            pooled = self.head.norm_after_pool(h.mean(1))
            state = self.normalizer.normalize_state(obs.state.to(pooled.dtype))
            return self.head.combine(torch.cat([pooled, state], dim=-1))
        pooled = (h * attn[..., None]).sum(1) / attn.sum(1, keepdim=True)
        state = self.normalizer.normalize_state(obs.state.to(pooled.dtype))
        return torch.cat([pooled, state], dim=-1)                             # (B, D + Ds)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.head(x, t, cond)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network `cfg.architecture` names: TinyVLAPolicy, or (diffusion_policy) the
    LeRobot-shaped DiffusionPolicyModel of core/dp_model.py; both encode(obs) -> cond and
    forward(x_k, t, cond) -> eps, with a `normalizer` and a `head`."""
    if cfg.architecture == "diffusion_policy":
        from .dp_model import DiffusionPolicyModel
        return DiffusionPolicyModel(cfg)
    return TinyVLAPolicy(cfg)
