"""Launch files are standard (launch_ros) and their YAML configs are what the nodes declare."""
import ast
from pathlib import Path

import pytest
import yaml

from tinyvla_grpo_ros.launcher import NODES, Launch, node_command, node_sections, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["sim", "real_arm", "gazebo"])
def test_launch_file_is_valid_python_with_a_generate_function(name):
    tree = ast.parse((ROOT / "launch" / f"{name}.launch.py").read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    imports = {a.module for a in ast.walk(tree) if isinstance(a, ast.ImportFrom)}
    assert {"launch_ros.actions", "tinyvla_grpo_ros.launch_helpers"} & imports


LAUNCH_ARGS = {"sim": {}, "gazebo": {},
               "real_arm": {"camera_topics": "['/cam/left', '/cam/right']",
                            "controller_topic": "/arm/jtc/joint_trajectory"}}


def resolved_parameters(name: str, args: dict[str, str]) -> dict[str, dict]:
    """Each tinyvla node of a launch file -> the parameters `ros2 launch` would give it: its
    params file's `/**/<node>` section, then the launch file's own values, all substituted."""
    import importlib.util

    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node
    from launch_ros.utilities import evaluate_parameters

    from launch import LaunchContext
    spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    context = LaunchContext()
    context.launch_configurations.update(args)
    out = {}
    for entity in mod.generate_launch_description().entities:
        if isinstance(entity, DeclareLaunchArgument):
            if entity.name not in context.launch_configurations:
                entity.execute(context)
        elif isinstance(entity, Node) and entity.node_package == "tinyvla_grpo_ros":
            params = {}
            for p in evaluate_parameters(context, entity._Node__parameters):
                if isinstance(p, dict):
                    params.update(p)
                else:
                    params.update(node_sections(Path(p))[entity.node_executable])
            out[entity.node_executable] = params
    return out


@pytest.mark.parametrize("name", ["sim", "real_arm", "gazebo"])
def test_launch_files_resolve_to_what_the_nodes_declare(name, tmp_path):
    """With real arguments and a namespace: every parameter a launch file hands a node has the
    type the node declares (a node started with them takes them all) and the value given."""
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI here")
    import rclpy
    from rclpy.parameter import Parameter
    from test_recipe import tiny_checkpoint

    from tinyvla_grpo_ros.nodes.episode_manager_node import EpisodeManagerNode
    from tinyvla_grpo_ros.nodes.learner_node import LearnerNode
    from tinyvla_grpo_ros.nodes.policy_node import PolicyNode
    ckpt = str(tiny_checkpoint(tmp_path))
    args = {"checkpoint": ckpt, "namespace": "arm1", "adapter_root": str(tmp_path / "a"),
            "store_root": str(tmp_path / "r"), "device": "cpu"} | LAUNCH_ARGS[name]
    nodes = resolved_parameters(name, args)
    classes = {"policy_node": PolicyNode, "learner_node": LearnerNode,
               "episode_manager_node": EpisodeManagerNode}
    assert set(nodes) >= set(classes)
    assert all(p["checkpoint"] == ckpt for n, p in nodes.items() if n != "episode_manager_node"
               and n in classes)
    if name == "real_arm":
        assert nodes["policy_node"]["camera_topics"] == ["/cam/left", "/cam/right"]
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        for executable, params in nodes.items():
            if executable not in classes:
                continue
            if executable == "episode_manager_node":
                params = params | {"panel_port": -1}
            if executable == "policy_node":              # the tiny checkpoint's robot
                params = params | {"joint_names": [f"j{i}" for i in range(9)],
                                   "action_names": ["a0", "a1", "a2", "a3"],
                                   "action_low": [-1.0] * 4, "action_high": [1.0] * 4}
            node = classes[executable](context=ctx, namespace="arm1", parameter_overrides=[
                Parameter(k, value=v) for k, v in params.items()])
            try:
                for k, v in params.items():
                    got = node.get_parameter(k).value
                    got = list(got) if isinstance(got, (list, tuple)) else got
                    assert got == v, f"{name}: {executable}.{k}: {got!r} != {v!r}"
            finally:
                node.close()
                node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


@pytest.mark.parametrize("cfg", ["sim_loop", "real_arm", "gazebo"])
def test_every_config_section_names_a_node_in_any_namespace(cfg):
    data = yaml.safe_load((ROOT / "config" / f"{cfg}.yaml").read_text())
    assert all(k.startswith("/**/") for k in data), list(data)   # also under a namespace
    assert set(node_sections(ROOT / "config" / f"{cfg}.yaml")) <= set(NODES)
    assert all(set(v) == {"ros__parameters"} for v in data.values())


def test_launcher_builds_the_same_command_line_ros2_run_would():
    cmd = node_command("policy_node", ROOT / "config" / "sim_loop.yaml", {"seed": "3"}, "/arm1")
    assert cmd[cmd.index("--params-file") + 1].endswith("sim_loop.yaml")
    assert "seed:=3" in cmd and "__ns:=/arm1" in cmd
    assert parse_overrides(["policy_node.seed=3"]) == {"policy_node": {"seed": "3"}}
    with pytest.raises(ValueError, match="node.param=value"):
        parse_overrides(["seed=3"])
    with pytest.raises(ValueError, match="not started"):
        Launch(ROOT / "config" / "sim_loop.yaml", {"nodee": {"a": "1"}})


def _launch_values() -> dict[str, str]:
    """{parameter: the type the launch files give it} from their `value(name, kind)` calls
    (launch_helpers.value: a LaunchConfiguration typed with ParameterValue)."""
    out = {}
    files = list((ROOT / "launch").glob("*.launch.py")) + [
        ROOT / "tinyvla_grpo_ros" / "launch_helpers.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and isinstance(v, ast.Call) and \
                        getattr(v.func, "id", "") == "value":
                    out[k.value] = ast.unparse(v.args[1]) if len(v.args) > 1 else "str"
    return out


def test_every_launch_file_parameter_has_the_type_its_node_declares():
    """Runs without launch_ros: what each launch file hands a node, typed as the node's field
    (or its known parameter) is typed; a list argument stays a list."""
    from tinyvla_grpo_ros.core.config import GRPOConfig, PolicyNodeConfig
    from tinyvla_grpo_ros.core.episode_machine import EpisodeManagerConfig
    from tinyvla_grpo_ros.core.recipe import settings
    declared = {"checkpoint": "str", "adapter_root": "str", "store_root": "str",
                "use_sim_time": "bool"}
    for cls in (PolicyNodeConfig, GRPOConfig, EpisodeManagerConfig):
        for s in settings(cls):
            declared.setdefault(s.name, "list[str]" if s.kind is tuple else s.kind.__name__)
    given = _launch_values()
    assert {"camera_topics", "use_sim_time", "checkpoint", "device"} <= set(given)
    for name, kind in given.items():
        assert name in declared, f"the launch files set {name!r}, which no node declares"
        assert kind == declared[name], f"{name}: launch {kind}, node {declared[name]}"
