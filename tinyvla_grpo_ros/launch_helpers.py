"""What the three launch files share: their arguments and how a node of this package starts.

Imported by launch/*.launch.py only (it needs `launch` and `launch_ros`, which a ROS 2 install
has; nothing else in the package imports it).

Every node: in the `namespace` argument's namespace, with the config file's parameters (its keys
are `/**/<node>`, so they apply in any namespace), then the arguments' values (checkpoint,
roots, device, use_sim_time); `log_level` for its logger; output on the screen; an essential
node that exits ends the whole launch (the others are stopped, not left commanding a robot
without its partner).
"""
from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, Shutdown
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "tinyvla_grpo_ros"
ROS_HOME = EnvironmentVariable("ROS_HOME", default_value=os.path.join(
    os.path.expanduser("~"), ".ros"))


def arguments(config: str, use_sim_time: str = "false") -> list[DeclareLaunchArgument]:
    """The arguments every launch file takes; `config` names the default params file."""
    return [
        DeclareLaunchArgument("checkpoint", description="SFT checkpoint directory"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of every node (several robots)"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution(
            [FindPackageShare(PACKAGE), "config", config]),
            description="ROS 2 params file (keys /**/<node>: any namespace)"),
        DeclareLaunchArgument("adapter_root", default_value=PathJoinSubstitution(
            [ROS_HOME, "tinyvla_grpo", "adapters"]), description="adapter versions"),
        DeclareLaunchArgument("store_root", default_value=PathJoinSubstitution(
            [ROS_HOME, "tinyvla_grpo", "rollouts"]), description="rollout store"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="torch device of policy and learner: auto, cpu, cuda"),
        DeclareLaunchArgument("use_sim_time", default_value=use_sim_time,
                              choices=["true", "false"], description="use /clock"),
        DeclareLaunchArgument("log_level", default_value="info",
                              choices=["debug", "info", "warn", "error", "fatal"]),
    ]


def value(name: str, kind=str) -> ParameterValue:
    return ParameterValue(LaunchConfiguration(name), value_type=kind)


def node(executable: str, parameters: dict | None = None, essential: bool = True,
         remappings: list[tuple[str, str]] | None = None) -> Node:
    """A node of this package with the shared arguments applied (see the module docstring)."""
    params = {"use_sim_time": value("use_sim_time", bool)}
    if executable in ("policy_node", "learner_node"):
        params |= {"checkpoint": value("checkpoint"), "adapter_root": value("adapter_root"),
                   "device": value("device")}
    if executable in ("episode_manager_node", "learner_node"):
        params |= {"store_root": value("store_root")}
    return Node(package=PACKAGE, executable=executable, name=executable,
                namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
                parameters=[LaunchConfiguration("params_file"), params | (parameters or {})],
                remappings=remappings or [],
                ros_arguments=["--log-level", LaunchConfiguration("log_level")],
                on_exit=Shutdown(reason=f"{executable} exited") if essential else None)
