"""sim_node's simulated operator: core/corrections.SimulatedOperator's rule acting through the
topics and the service a person's panel uses.

Every control step the sim executes, the rule compares the policy's action with Meta-World's
scripted expert. When it takes over, policy_node's `intervene` service is pressed and, once
answered, `operator_action` carries the expert's action (refreshed every step while in
control). As on an arm whose controller already holds the policy's trajectory, the chunk in
progress runs to its end and policy_node's next decision is the operator's: the sim holds that
decision's observation back until policy_node has answered. Handing back releases `intervene`
the same way. Evaluation episodes are never corrected: the episode state says which is which.
"""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool
from tinyvla_grpo_interfaces.msg import EpisodeState

from ..core.corrections import OperatorConfig, SimulatedOperator
from ..sim.metaworld_scene import ACTION_NAMES, expert_policy
from . import ros_common as rc


class SimOperatorBridge:
    def __init__(self, node, task: str, cfg: OperatorConfig, observe) -> None:
        """observe: () -> None publishes the observation of a decision point (called with the
        sim's lock, when its queue is empty)."""
        self.node, self.observe = node, observe
        self.rule, self.expert = SimulatedOperator(cfg), expert_policy(task)
        self.client = node.create_client(SetBool, "intervene")
        self.pub = node.create_publisher(JointState, "operator_action", rc.RELIABLE)
        self.episode = EpisodeState()
        self.pending = False          # an intervene call on its way: the sim waits for it
        self.expert_now = None        # the expert's action at the latest judged step
        node.create_subscription(EpisodeState, "episode_state", self.on_episode, rc.LATCHED)

    def on_episode(self, msg: EpisodeState) -> None:
        if msg.episode_id != self.episode.episode_id:
            self.rule.reset()
        self.episode = msg

    @property
    def judging(self) -> bool:
        return self.episode.state == EpisodeState.RUNNING and not self.episode.deterministic

    def step(self, scene, action: np.ndarray, operator_chunk: bool) -> None:
        """Judge the step the sim is about to execute (`action`, the policy's or the
        operator's chunk); take over or hand back at the next decision."""
        if not self.judging or self.pending:
            return
        expert = scene.expert_action(self.expert)
        was = self.rule.in_control
        drives = self.rule.step(None if operator_chunk else action, expert)
        self.expert_now = expert
        if drives:
            self.command(expert)
        if drives != was:
            self.press(drives)

    def command(self, expert: np.ndarray) -> None:
        self.pub.publish(JointState(name=list(ACTION_NAMES),
                                    position=np.clip(expert, -1.0, 1.0).tolist()))

    def press(self, on: bool) -> None:
        if not self.client.service_is_ready():
            self.node.get_logger().warning("simulated operator: policy_node's intervene "
                                           "service is not up", throttle_duration_sec=5.0)
            self.rule.in_control = False
            return
        self.pending = True
        future = self.client.call_async(SetBool.Request(data=on))
        future.add_done_callback(lambda f: self.answered(f, on))

    def answered(self, future, on: bool) -> None:
        r = future.result()
        if r is None or not r.success:
            self.node.get_logger().warning(f"simulated operator: intervene {on} refused: "
                                           f"{r.message if r else 'no answer'}")
            self.rule.in_control = False
        elif on:
            self.command(self.expert_now)   # a takeover starts without a command: send it now
        with self.node.lock:
            self.pending = False
            if not self.node.queue:
                self.observe()         # the decision point it held back
