"""Model, checkpoints and SFT: round-trips are bit-exact, mismatches are named, SFT imitates."""
import json

import pytest
import torch
from helpers import random_obs, tiny_config, tiny_model

from tinyvla_grpo_ros.core import tokenizer
from tinyvla_grpo_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig, SFTConfig
from tinyvla_grpo_ros.core.demos import load_demos, save_demo
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.core.sft import train_sft
from tinyvla_grpo_ros.sim.toy_reach import ToyReach, toy_model_config


def test_tiny_preset_is_under_ten_million_parameters_and_runs():
    cfg = ModelConfig.preset("tiny")
    model = TinyVLAPolicy(cfg)
    assert model.num_parameters() < 10_000_000
    obs = random_obs(cfg, B=2)
    with torch.no_grad():
        eps = model(torch.randn(2, cfg.horizon, cfg.action_dim), torch.tensor([3, 9]),
                    model.encode(obs))
    assert eps.shape == (2, cfg.horizon, cfg.action_dim) and torch.isfinite(eps).all()


@pytest.mark.parametrize("name", ["tinyvla_s", "tinyvla_b", "tinyvla_h"])
def test_large_presets_load_with_their_shapes(name):
    cfg = ModelConfig.preset(name)
    assert cfg.vision == "vit" and cfg.lm_hidden >= 512


def test_unknown_preset_and_unknown_field_are_errors():
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({"lm_hiden": 3})
    with pytest.raises(ValueError, match="lm_heads"):
        tiny_config(lm_hidden=10, lm_heads=4)


def test_tokenizer_round_trips_and_truncates():
    ids, mask = tokenizer.encode(["hé", "a longer instruction"], max_tokens=8)
    assert ids.shape == (2, 8) and mask[0].sum() == 5          # BOS, 3 utf-8 bytes, EOS
    assert tokenizer.decode(ids[0]) == "hé"
    assert mask[1].sum() == 8


def test_images_of_another_size_are_resized_and_wrong_layout_rejected():
    model = tiny_model()
    cfg = model.config
    obs = random_obs(cfg, B=1)
    big = obs.images.repeat_interleave(2, 2).repeat_interleave(2, 3)    # (1, Nc, 32, 32, 3)
    with torch.no_grad():
        cond = model.encode(type(obs)(big, obs.state, obs.instruction))
        assert cond.shape == (1, model.cond_dim)
        with pytest.raises(ValueError, match="images must be"):
            model.encode(type(obs)(obs.images[:, :1], obs.state, obs.instruction))


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    model = tiny_model(seed=3)
    model.normalizer.fit(torch.randn(50, 2) * 3, torch.randn(50, 3))
    save_checkpoint(tmp_path / "ckpt", model, SamplerConfig(stochastic_steps=2))
    loaded, sampler_cfg, _ = load_checkpoint(tmp_path / "ckpt")
    assert sampler_cfg.stochastic_steps == 2
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    obs = random_obs(model.config)
    s = DiffusionSampler(model.config, sampler_cfg, sft_model=model)
    x = s.sample(model, obs, torch.Generator().manual_seed(0))
    y = s.sample(loaded.eval(), obs, torch.Generator().manual_seed(0))
    assert torch.equal(x.actions, y.actions)


def test_checkpoint_with_mismatched_shapes_is_rejected_naming_the_tensor(tmp_path):
    save_checkpoint(tmp_path / "ckpt", tiny_model())
    cfg_path = tmp_path / "ckpt" / "config.json"
    data = json.loads(cfg_path.read_text())
    data["model"]["action_dim"] = 3
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"shape mismatch .*normalizer\.action_min"):
        load_checkpoint(tmp_path / "ckpt")


def test_truncated_checkpoint_is_rejected_with_the_path(tmp_path):
    save_checkpoint(tmp_path / "ckpt", tiny_model())
    f = tmp_path / "ckpt" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cannot read .*model.safetensors"):
        load_checkpoint(tmp_path / "ckpt")


def test_demonstrations_round_trip_through_disk(tmp_path):
    env = ToyReach()
    for i, d in enumerate(env.demonstrations([0, 1, 2])):
        save_demo(tmp_path, f"ep{i}", d)
    demos = load_demos(tmp_path)
    assert len(demos) == 3 and demos[0].instruction == "reach the red dot"
    assert torch.equal(demos[1].images, env.demonstrations([1])[0].images)


def test_sft_lowers_the_loss_and_imitates_better_than_untrained():
    env = ToyReach()
    cfg = toy_model_config()
    demos = env.demonstrations(list(range(128)))
    torch.manual_seed(0)
    model = TinyVLAPolicy(cfg)
    untrained = TinyVLAPolicy(cfg)
    untrained.load_state_dict(model.state_dict())
    losses = train_sft(model, demos, SFTConfig(steps=300, batch_size=32, lr=3e-3),
                       progress=False)
    untrained.normalizer.load_state_dict(model.normalizer.state_dict())   # same action scale
    assert sum(losses[-30:]) / 30 < 0.5 * sum(losses[:30]) / 30
    # two models through one sampler: each runs its own unscored steps
    sampler = DiffusionSampler(cfg, SamplerConfig(frozen_prefix=False))
    ids = list(range(128))                          # the demonstrated states
    expert = torch.stack([torch.from_numpy(env.expert_chunk(i)) for i in ids])
    err = {}
    for name, m in [("sft", model), ("untrained", untrained.eval())]:
        chunk = sampler.sample(m, env.observe(ids), torch.Generator().manual_seed(0),
                               deterministic=True)
        err[name] = (chunk.actions - expert).abs().mean().item()
    assert err["sft"] < 0.5 * err["untrained"], err
