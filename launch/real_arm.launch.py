"""On a real arm: policy + episode manager (operator resets and marks) + learner.

The arm's driver must provide a camera topic, /joint_states and a joint_trajectory_controller; the
model's actions must be joint positions in the order of `joint_names` (end-effector actions need
your IK between policy_node and the controller).

    ros2 launch tinyvla_grpo_ros real_arm.launch.py checkpoint:=/path/to/sft \
        camera:=/camera/color/image_raw controller:=/joint_trajectory_controller/joint_trajectory
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    params = os.path.join(get_package_share_directory("tinyvla_grpo_ros"), "config",
                          "real_arm.yaml")
    ckpt = LaunchConfiguration("checkpoint")
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="SFT checkpoint directory"),
        DeclareLaunchArgument("camera", default_value="/camera/color/image_raw"),
        DeclareLaunchArgument("controller",
                              default_value="/joint_trajectory_controller/joint_trajectory"),
        Node(package="tinyvla_grpo_ros", executable="policy_node",
             parameters=[params, {"checkpoint": ckpt,
                                  "camera_topics": [LaunchConfiguration("camera")],
                                  "controller_topic": LaunchConfiguration("controller")}],
             remappings=[("joint_states", "/joint_states")]),
        Node(package="tinyvla_grpo_ros", executable="episode_manager_node", parameters=[params]),
        Node(package="tinyvla_grpo_ros", executable="learner_node",
             parameters=[params, {"checkpoint": ckpt}]),
    ])
