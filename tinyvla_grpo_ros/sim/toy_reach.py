"""A 2-D reach task seen in a small image: the toy on which GRPO's learning is tested and measured.

Init state id -> (agent position p0, target g), seeded. The image shows the target (red disc) and
the
agent (green disc); the state is p0. A chunk is Ta relative moves a_1..a_Ta (Da = 2); the episode
is
one chunk and succeeds when || p0 + sum(a) - g || < radius. The expert moves (g - p0) / Ta per
step.
Pure numpy/torch: fast enough to run hundreds of episodes in a unit test.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.config import ModelConfig
from ..core.demos import Demonstration
from ..core.model import Observation

INSTRUCTION = "reach the red dot"


def toy_model_config(**overrides) -> ModelConfig:
    """A model sized for the toy: 32 px image, 2-D state and actions, Ta = 4."""
    base = dict(name="toy", image_size=32, num_cameras=1, state_dim=2, action_dim=2, horizon=4,
                cnn_channels=(16, 32, 32), lm_hidden=32, lm_layers=1, lm_heads=4,
                lm_intermediate=128,
                max_text_tokens=24, down_dims=(32, 64), step_embed_dim=32, n_groups=8)
    base.update(overrides)
    return ModelConfig(**base)


class ToyReach:
    def __init__(self, image_size: int = 32, horizon: int = 4, radius: float = 0.12) -> None:
        self.image_size, self.horizon, self.radius = image_size, horizon, radius
        yy, xx = np.mgrid[0:image_size, 0:image_size]
        self._grid = np.stack([xx, yy], -1).astype(np.float32) / (image_size - 1) * 2 - 1

    def init_state(self, init_id: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(10_000 + init_id)
        return (rng.uniform(-0.5, 0.5, 2).astype(np.float32),
                rng.uniform(-0.8, 0.8, 2).astype(np.float32))

    def render(self, agent: np.ndarray, target: np.ndarray) -> np.ndarray:
        img = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        r = 3.0 / self.image_size * 2
        img[np.linalg.norm(self._grid - target, axis=-1) < r, 0] = 255
        img[np.linalg.norm(self._grid - agent, axis=-1) < r, 1] = 255
        return img

    def observe(self, init_ids: list[int]) -> Observation:
        imgs, states = [], []
        for i in init_ids:
            p0, g = self.init_state(i)
            imgs.append(self.render(p0, g))
            states.append(p0)
        return Observation(torch.from_numpy(np.stack(imgs))[:, None],          # (B, 1, H, W, 3)
                           torch.from_numpy(np.stack(states)), [INSTRUCTION] * len(init_ids))

    def expert_chunk(self, init_id: int) -> np.ndarray:
        p0, g = self.init_state(init_id)
        return np.repeat(((g - p0) / self.horizon)[None], self.horizon, 0)     # (Ta, 2)

    def success(self, init_ids: list[int], actions: torch.Tensor) -> torch.Tensor:
        """actions (B, Ta, 2) -> (B,) bool."""
        out = []
        for i, a in zip(init_ids, actions.detach().cpu().numpy()):
            p0, g = self.init_state(i)
            out.append(np.linalg.norm(p0 + a.sum(0) - g) < self.radius)
        return torch.tensor(out)

    def demonstrations(self, init_ids: list[int]) -> list[Demonstration]:
        """One-step demos: the window repeats the last action, the expert's constant move."""
        demos = []
        for i in init_ids:
            obs = self.observe([i])
            demos.append(Demonstration(obs.images, obs.state,
                                       torch.from_numpy(self.expert_chunk(i)[:1]), INSTRUCTION,
                                       task="toy_reach"))
        return demos
