"""The closed GRPO loop in the built-in MuJoCo simulation, from config/sim_loop.yaml.

    ros2 launch tinyvla_grpo_ros sim.launch.py checkpoint:=/path/to/sft namespace:=arm1
Here (no ros2 launch): python -m tinyvla_grpo_ros.launcher config/sim_loop.yaml
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    params = os.path.join(get_package_share_directory("tinyvla_grpo_ros"), "config",
                          "sim_loop.yaml")
    ckpt = LaunchConfiguration("checkpoint")
    ns = LaunchConfiguration("namespace")
    with_ckpt = [params, {"checkpoint": ckpt}]
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="SFT checkpoint directory"),
        DeclareLaunchArgument("namespace", default_value=""),
        Node(package="tinyvla_grpo_ros", executable="sim_node", namespace=ns,
             parameters=[params]),
        Node(package="tinyvla_grpo_ros", executable="policy_node", namespace=ns,
             parameters=with_ckpt),
        Node(package="tinyvla_grpo_ros", executable="episode_manager_node", namespace=ns,
             parameters=[params]),
        Node(package="tinyvla_grpo_ros", executable="learner_node", namespace=ns,
             parameters=with_ckpt),
    ])
