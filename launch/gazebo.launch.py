"""An arm in Gazebo (gz-sim) on the same topics as the real arm, with the GRPO loop on top.

Needs ros_gz_sim, ros_gz_bridge and ros2_control (gz_ros2_control with a
joint_trajectory_controller) at launch time; the description itself builds without them
(`--show-args` works anywhere). Your robot description spawns the arm with gz_ros2_control;
this file bridges the camera and /clock and starts the three nodes with use_sim_time.

    ros2 launch tinyvla_grpo_ros gazebo.launch.py checkpoint:=/path/to/sft world:=my_world.sdf
"""
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from tinyvla_grpo_ros.launch_helpers import arguments, node, value


def generate_launch_description():
    gz = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution(
            [FindPackageShare("ros_gz_sim"), "launch", "gz_sim.launch.py"])),
        launch_arguments={"gz_args": ["-r ", LaunchConfiguration("world")]}.items())
    bridge = Node(
        package="ros_gz_bridge", executable="parameter_bridge", name="gz_bridge",
        namespace=LaunchConfiguration("namespace"), output="screen",
        arguments=["/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock",
                   "/camera/image_raw@sensor_msgs/msg/Image[gz.msgs.Image",
                   "/camera/camera_info@sensor_msgs/msg/CameraInfo[gz.msgs.CameraInfo"],
        parameters=[{"use_sim_time": value("use_sim_time", bool)}])
    return LaunchDescription(arguments("gazebo.yaml", use_sim_time="true") + [
        DeclareLaunchArgument("world", default_value="empty.sdf"),
        gz, bridge,
        node("policy_node", remappings=[("joint_states", "/joint_states")]),
        node("episode_manager_node"), node("learner_node")])
