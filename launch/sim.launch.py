"""The closed GRPO loop in the built-in MuJoCo simulation, from config/sim_loop.yaml.

    ros2 launch tinyvla_grpo_ros sim.launch.py checkpoint:=/path/to/sft [namespace:=arm1]
        [adapter_root:=...] [store_root:=...] [device:=cpu] [log_level:=debug]
Without ros2 launch: python -m tinyvla_grpo_ros.launcher config/sim_loop.yaml --set ...
"""
from launch import LaunchDescription
from tinyvla_grpo_ros.launch_helpers import arguments, node


def generate_launch_description():
    return LaunchDescription(arguments("sim_loop.yaml") + [
        node("sim_node"), node("policy_node"), node("episode_manager_node"),
        node("learner_node")])
