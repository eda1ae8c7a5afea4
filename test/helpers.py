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


def assert_rl_ready(model, scfg, obs, task: str) -> None:
    """An (imported) model fine-tunes: sampling gives finite log-probs, re-scoring the chain
    gives a first ratio of 1, and one GRPO update changes the adapter's tensors only."""
    from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig
    from tinyvla_grpo_ros.core.config import GRPOConfig
    from tinyvla_grpo_ros.core.learner import GRPOLearner
    from tinyvla_grpo_ros.core.sampler import DiffusionSampler
    from tinyvla_grpo_ros.core.synthetic import synthetic_groups
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)
    policy = AdaptedPolicy(model, AdapterConfig(preset="adapters", rank=2), [task])
    chunk = sampler.sample(policy.model, obs, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(chunk.log_probs).all()
    again = sampler.chain_log_prob(policy.model, obs, chunk.chain)
    assert torch.allclose(torch.exp(again - chunk.log_probs), torch.ones_like(again), atol=1e-5)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    learner = GRPOLearner(policy, sampler, GRPOConfig(
        group_size=4, lr=1e-2, epochs=1, minibatch_size=4, micro_batch_size=4, target_kl=0.0,
        warmup_steps=0, device="cpu"))
    assert learner.update(synthetic_groups(policy, sampler, n_groups=1)).optimizer_steps
    after = policy.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed), sorted(changed)[:4]
