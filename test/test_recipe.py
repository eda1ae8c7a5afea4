"""One recipe: node parameters, config/*.yaml and the bench's options all derive from the
dataclass fields; this fails when a node, a YAML file and a dataclass disagree."""
import argparse
from pathlib import Path

import pytest
import rclpy
import torch
from rclpy.parameter import Parameter

from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
from tinyvla_grpo_ros.core.config import (
    GRPOConfig,
    ModelConfig,
    PolicyNodeConfig,
    SamplerConfig,
)
from tinyvla_grpo_ros.core.corrections import OperatorConfig
from tinyvla_grpo_ros.core.episode_machine import EpisodeManagerConfig
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.core.recipe import add_arguments, from_arguments, settings
from tinyvla_grpo_ros.core.takeover import TakeoverConfig
from tinyvla_grpo_ros.launcher import node_sections

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / "config").glob("*.yaml"))
NODE_RECIPES = {"learner_node": (GRPOConfig,), "policy_node": (PolicyNodeConfig, TakeoverConfig),
                "episode_manager_node": (EpisodeManagerConfig,), "sim_node": (OperatorConfig,)}


def sections(path):
    return node_sections(path)


def test_every_setting_has_a_help_and_its_default_passes_its_own_checks():
    for cls in (GRPOConfig, SamplerConfig, PolicyNodeConfig, EpisodeManagerConfig,
                TakeoverConfig, OperatorConfig):
        fields = settings(cls)
        assert fields and all(s.help for s in fields)
        cls()                                            # the adopted defaults are valid


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_recipe_values_have_the_fields_type_and_pass_its_checks(path):
    for node, params in sections(path).items():
        for cls in NODE_RECIPES.get(node, ()) + ((SamplerConfig,) if node in (
                "learner_node", "policy_node") else ()):
            fields = {s.name: s for s in settings(cls)}
            given = {k: v for k, v in params.items() if k in fields}
            for k, v in given.items():
                kind = fields[k].kind
                ok = isinstance(v, list) if kind is tuple else (
                    isinstance(v, (int, float)) and not isinstance(v, bool)
                    if kind is float else isinstance(v, kind))
                assert ok, f"{path.name}: {node}.{k} = {v!r} is not a {kind.__name__}"
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
            if cls is SamplerConfig:
                continue                                 # checked on top of a checkpoint's
            cls(**values)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_policy_and_learner_agree_on_the_sampler_settings_they_set(path):
    secs = sections(path)
    if "policy_node" not in secs or "learner_node" not in secs:
        pytest.skip("no policy/learner pair")
    for name in SamplerConfig.RECIPE:
        if name == "executed_steps":                     # recorded per chunk, read from it
            continue
        assert secs["policy_node"].get(name) == secs["learner_node"].get(name), name


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_the_episode_manager_and_the_learner_agree_on_g(path):
    secs = sections(path)
    g = {n: secs[n].get("group_size", GRPOConfig.group_size)
         for n in ("episode_manager_node", "learner_node") if n in secs}
    assert len(set(g.values())) <= 1, f"{path.name}: group_size differs: {g}"
    assert EpisodeManagerConfig.group_size == GRPOConfig.group_size


def test_bench_options_are_the_dataclass_fields_with_their_defaults():
    ap = argparse.ArgumentParser()
    add_arguments(ap, GRPOConfig, skip=("device",))
    args = ap.parse_args([])
    assert from_arguments(GRPOConfig, args) == GRPOConfig()
    args = ap.parse_args(["--lr", "3e-4", "--epochs", "2"])
    cfg = from_arguments(GRPOConfig, args)
    assert (cfg.lr, cfg.epochs, cfg.minibatch_size) == (3e-4, 2, GRPOConfig.minibatch_size)


@pytest.fixture
def ros():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def overrides(params: dict, **extra):
    return [Parameter(k, value=v) for k, v in (params | extra).items()]


def check_node(node, params: dict, classes, defaults=None):
    """Every YAML key is a declared parameter; every recipe field is declared with its help and
    reads the YAML's value when given, else the default."""
    for k in params:
        assert node.has_parameter(k), f"{node.get_name()} does not declare {k!r} from the YAML"
    for cls in classes:
        for s in settings(cls, SamplerConfig.RECIPE if cls is SamplerConfig else None):
            got = node.get_parameter(s.name).value
            want = params.get(s.name, getattr(defaults, s.name, s.default)
                              if defaults is not None and cls is SamplerConfig else s.default)
            want = list(want) if isinstance(want, tuple) else want
            got = list(got) if isinstance(got, (tuple, list)) or hasattr(got, "tolist") else got
            assert got == pytest.approx(want) if isinstance(want, float) else got == want, \
                f"{node.get_name()}.{s.name}: node {got!r}, expected {want!r}"
            desc = node.describe_parameter(s.name).description
            assert desc.startswith(s.help), (s.name, desc)


def tiny_checkpoint(tmp_path, executed_steps=4):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    return save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg),
                           SamplerConfig(executed_steps=executed_steps))


def test_sim_loop_yaml_reaches_the_learner_and_policy_parameters(tmp_path, ros):
    from tinyvla_grpo_ros.nodes.learner_node import LearnerNode
    from tinyvla_grpo_ros.nodes.policy_node import PolicyNode
    secs = sections(ROOT / "config" / "sim_loop.yaml")
    ckpt = str(tiny_checkpoint(tmp_path))
    paths = dict(checkpoint=ckpt, adapter_root=str(tmp_path / "a"),
                 store_root=str(tmp_path / "r"))
    learner = LearnerNode(context=ros, parameter_overrides=overrides(
        secs["learner_node"], **paths))
    try:
        check_node(learner, secs["learner_node"] | paths, (GRPOConfig, SamplerConfig),
                   SamplerConfig(executed_steps=4))
        assert learner.learner.cfg == GRPOConfig(**{k: v for k, v in secs["learner_node"].items()
                                                    if k in GRPOConfig.__dataclass_fields__})
    finally:
        learner.close()
        learner.destroy_node()
    pol = {k: v for k, v in secs["policy_node"].items() if k != "store_root"}
    policy = PolicyNode(context=ros, parameter_overrides=overrides(
        pol, checkpoint=ckpt, adapter_root=str(tmp_path / "a")))
    try:
        check_node(policy, pol, (PolicyNodeConfig, SamplerConfig),
                   SamplerConfig(executed_steps=4))
        assert policy.runtime.sampler.executed_steps() == pol["executed_steps"]
    finally:
        policy.close()
        policy.destroy_node()


def test_sim_loop_yaml_reaches_the_episode_manager(tmp_path, ros):
    from tinyvla_grpo_ros.nodes.episode_manager_node import EpisodeManagerNode
    params = sections(ROOT / "config" / "sim_loop.yaml")["episode_manager_node"] | {
        "store_root": str(tmp_path), "panel_port": -1}
    node = EpisodeManagerNode(context=ros, parameter_overrides=overrides(params))
    try:
        check_node(node, params, (EpisodeManagerConfig,))
        cfg = node.machine.cfg
        assert list(cfg.init_state_ids) == params["init_state_ids"]
        assert cfg.init_state_sampling == params["init_state_sampling"]
    finally:
        node.close()
        node.destroy_node()


def test_a_policy_node_without_joint_names_refuses_to_start(tmp_path, ros):
    from tinyvla_grpo_ros.nodes.policy_node import PolicyNode
    with pytest.raises(ValueError, match="joint_names"):
        PolicyNode(context=ros, parameter_overrides=overrides(
            {"checkpoint": str(tiny_checkpoint(tmp_path)), "tasks": ["reach-v3"]}))
