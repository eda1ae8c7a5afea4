"""The episode manager's init-state bookkeeping survives a restart and follows finished groups."""
import rclpy
import torch
from rclpy.parameter import Parameter

from tinyvla_grpo_ros.core.rollout_store import EpisodeRecord, RolloutStore


def _group(store: RolloutStore, gid: str, init_id: int, successes: list[bool]) -> None:
    for j, s in enumerate(successes):
        store.write_episode(EpisodeRecord(
            episode_id=f"{gid}-e{j}", group_id=gid, task="reach-v3", init_state_id=init_id,
            adapter_name="reach-v3", adapter_version=0, instruction="x", reward=float(s),
            success=s, tensors={"images": torch.zeros(1, 1, 4, 4, 3, dtype=torch.uint8),
                                "states": torch.zeros(1, 3), "chains": torch.zeros(1, 2, 4, 2),
                                "log_probs": torch.zeros(1, 1),
                                "executed": torch.tensor([4])}))


def test_restart_reads_this_robots_complete_groups_once_and_finished_groups_update_them(
        tmp_path):
    from tinyvla_grpo_ros.nodes.episode_manager_node import EpisodeManagerNode
    store = RolloutStore(tmp_path)
    _group(store, "robot-reach-v3-v0000-s00003-aaaaaa", 3, [True, False])
    _group(store, "robot-reach-v3-v0000-s00003-bbbbbb", 3, [True, True])    # 3's latest
    _group(store, "robot-reach-v3-v0000-s00004-cccccc", 4, [False])         # incomplete
    _group(store, "arm2-reach-v3-v0000-s00005-dddddd", 5, [True, False])    # another robot
    _group(store, "eval-reach-v3-v0000-eeee", 6, [True, True])              # evaluation
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = EpisodeManagerNode(context=ctx, parameter_overrides=[
            Parameter("store_root", value=str(tmp_path)), Parameter("group_size", value=2),
            Parameter("init_state_ids", value=[3, 4, 5, 6]),
            Parameter("init_state_sampling", value="informative"),
            Parameter("panel_port", value=-1)])
        assert node.groups_done == 2 and node.latest == {3: (2, 2)}
        # weights follow: state 3 (latest 2/2) is drawn less often than unseen states
        picks = [node.pick_init_state() for _ in range(400)]
        assert picks.count(3) < min(picks.count(i) for i in (4, 5, 6))
        # a group finishing on state 4 counts as it finishes (no rescan of the store)
        _group(store, "robot-reach-v3-v0000-s00004-ffffff", 4, [True, False])
        node.state.group_id = "robot-reach-v3-v0000-s00004-ffffff"
        node.finish_group()
        assert node.latest == {3: (2, 2), 4: (1, 2)} and node.groups_done == 3
        node.close()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
