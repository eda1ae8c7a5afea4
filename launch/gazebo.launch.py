"""An arm in Gazebo (gz-sim) on the same topics as the real arm, with the GRPO loop on top.

Needs a ROS 2 install with ros_gz_sim, ros_gz_bridge and ros2_control (gz_ros2_control with a
joint_trajectory_controller). Your robot description spawns the arm with gz_ros2_control; this
file bridges the camera, joint states and /clock, and starts the three nodes with use_sim_time.

    ros2 launch tinyvla_grpo_ros gazebo.launch.py checkpoint:=/path/to/sft world:=my_world.sdf
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("tinyvla_grpo_ros")
    params = os.path.join(share, "config", "gazebo.yaml")
    ckpt = LaunchConfiguration("checkpoint")
    gz = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(
            get_package_share_directory("ros_gz_sim"), "launch", "gz_sim.launch.py")),
        launch_arguments={"gz_args": ["-r ", LaunchConfiguration("world")]}.items())
    bridge = Node(
        package="ros_gz_bridge", executable="parameter_bridge", name="gz_bridge",
        arguments=[
            "/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock",
            "/camera/image_raw@sensor_msgs/msg/Image[gz.msgs.Image",
            "/camera/camera_info@sensor_msgs/msg/CameraInfo[gz.msgs.CameraInfo",
        ],
        parameters=[{"use_sim_time": True}])
    sim_time = {"use_sim_time": True}
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="SFT checkpoint directory"),
        DeclareLaunchArgument("world", default_value="empty.sdf"),
        gz,
        bridge,
        Node(package="tinyvla_grpo_ros", executable="policy_node",
             parameters=[params, sim_time, {"checkpoint": ckpt}],
             remappings=[("joint_states", "/joint_states")]),
        Node(package="tinyvla_grpo_ros", executable="episode_manager_node",
             parameters=[params, sim_time]),
        Node(package="tinyvla_grpo_ros", executable="learner_node",
             parameters=[params, sim_time, {"checkpoint": ckpt}]),
    ])
