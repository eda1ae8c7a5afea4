"""Tiny models and observations shared by the core tests (CPU, seconds)."""
import torch

from tinyvla_grpo_ros.core.config import ModelConfig
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.core.synthetic import random_obs  # noqa: F401  (the tests' import)


def tiny_config(**overrides) -> ModelConfig:
    base = dict(name="test", image_size=16, num_cameras=2, state_dim=3, action_dim=2, horizon=4,
                cnn_channels=(8, 8), lm_hidden=16, lm_layers=2, lm_heads=2, lm_intermediate=32,
                max_text_tokens=16, down_dims=(16, 32), step_embed_dim=16, n_groups=8,
                num_train_timesteps=50)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> TinyVLAPolicy:
    torch.manual_seed(seed)
    return TinyVLAPolicy(tiny_config(**overrides)).eval()
