"""Launch files are standard (launch_ros) and their YAML configs are what the nodes declare."""
import ast
from pathlib import Path

import pytest
import yaml

from tinyvla_grpo_ros.launcher import NODES, Launch, node_command, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["sim", "real_arm", "gazebo"])
def test_launch_file_is_valid_python_with_a_generate_function(name):
    tree = ast.parse((ROOT / "launch" / f"{name}.launch.py").read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    imports = {a.module for a in ast.walk(tree) if isinstance(a, ast.ImportFrom)}
    assert "launch_ros.actions" in imports


def test_launch_files_run_when_ros2_launch_is_installed():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI here")
    import importlib.util
    for name in ("sim", "real_arm"):
        spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.launch.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.generate_launch_description().entities


@pytest.mark.parametrize("cfg", ["sim_loop", "real_arm", "gazebo"])
def test_every_config_section_names_a_node_and_uses_ros_parameters(cfg):
    data = yaml.safe_load((ROOT / "config" / f"{cfg}.yaml").read_text())
    assert set(data) <= set(NODES)
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
