"""On a real arm: policy + episode manager (the operator resets and marks) + learner.

The arm's driver provides the camera topics, joint_states and a joint_trajectory_controller; the
model's actions must be joint positions in the order of `action_names` (end-effector actions need
your IK between policy_node and the controller). Until an episode can run, the nodes say on
/diagnostics what they wait for (camera frames, joint_states, the operator's scene_ready).

    ros2 launch tinyvla_grpo_ros real_arm.launch.py checkpoint:=/path/to/sft \\
        camera_topics:="['/camera/color/image_raw']" \\
        controller_topic:=/joint_trajectory_controller/joint_trajectory [namespace:=arm1]
"""
from launch.actions import DeclareLaunchArgument

from launch import LaunchDescription
from tinyvla_grpo_ros.launch_helpers import arguments, node, value


def generate_launch_description():
    policy = {"camera_topics": value("camera_topics", list[str]),
              "controller_topic": value("controller_topic")}
    return LaunchDescription(arguments("real_arm.yaml") + [
        DeclareLaunchArgument("camera_topics", default_value="['/camera/color/image_raw']",
                              description="camera image topics, a YAML list"),
        DeclareLaunchArgument("controller_topic",
                              default_value="/joint_trajectory_controller/joint_trajectory"),
        node("policy_node", policy), node("episode_manager_node"), node("learner_node")])
