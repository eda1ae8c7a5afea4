"""policy_node's evaluation episodes are paired: the same scene meets the same x_K at each decision
whatever version runs, so the regression guard and the per-version table compare versions, not
noise draws. Exploration episodes keep fresh noise."""
import time

import numpy as np
from ros_harness import Client, SensorFeed, launch_policy_node
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState

from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE


def test_evaluation_episodes_of_one_scene_start_alike_and_exploration_episodes_do_not(tmp_path):
    launch, _ = launch_policy_node(tmp_path)
    client = Client("eval_pairing")
    n = client.node
    chunks: list[ActionChunk] = []
    n.create_subscription(ActionChunk, "action_chunk",
                          lambda m: chunks.append(m) if m.episode_id else None, RELIABLE)
    feed = SensorFeed(n)
    pub_ep = n.create_publisher(EpisodeState, "episode_state", LATCHED)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    def first_chunk(episode_id: str, init_state_id: int, deterministic: bool) -> np.ndarray:
        """Run an episode on the same observation; its first chunk's actions."""
        pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id=episode_id,
                                    task_id="reach-v3", init_state_id=init_state_id,
                                    deterministic=deterministic))
        client.spin_until(lambda: False, 0.3)
        deadline = time.monotonic() + 20
        while True:
            mine = [m for m in chunks if m.episode_id == episode_id and m.chunk_index == 0]
            if mine:
                break
            assert time.monotonic() < deadline and launch.poll() is None, \
                (tmp_path / "policy_node.log").read_text()[-2000:]
            feed.publish(image)                  # the same observation every time
            client.spin_until(lambda: False, 0.3)
        return np.array(mine[0].actions)

    try:
        eval_a = first_chunk("eval-a", 5, True)
        eval_b = first_chunk("eval-b", 5, True)
        other_scene = first_chunk("eval-c", 6, True)
        explore_a = first_chunk("explore-a", 5, False)
        explore_b = first_chunk("explore-b", 5, False)
        np.testing.assert_array_equal(eval_a, eval_b)       # same scene, same x_K
        assert not np.allclose(eval_a, other_scene)         # another scene, another draw
        assert not np.allclose(explore_a, explore_b)        # exploration stays random
    finally:
        client.close()
        launch.stop()
