"""The simulated operator through the nodes: sim_node's scripted expert presses policy_node's
intervene and drives operator_action, exactly as a person's panel and teleop device would; the
episode manager stores the corrections with the episode."""
import torch
from ros_harness import one_group_through_the_nodes

from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.model import TinyVLAPolicy


def test_the_simulated_operator_corrects_a_random_policy_through_the_nodes(tmp_path):
    torch.manual_seed(0)
    mcfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(mcfg), SamplerConfig(executed_steps=4))
    ov = {"sim_node": {"image_size": 32, "max_steps": 80, "pace": "wall",
                       "simulated_operator": True, "disagree_steps": 2, "takeover_steps": 8,
                       "budget_steps": 24},
          "policy_node": {"checkpoint": ckpt, "adapter_root": tmp_path / "adapters",
                          "trainable_preset": "adapters"},
          "episode_manager_node": {"group_size": 2, "num_groups": 1, "init_state_ids": "[4]",
                                   "eval_init_state_ids": "[-1]", "max_episode_s": 60.0,
                                   "max_chunks": 20, "store_root": tmp_path / "rollouts",
                                   "panel_port": -1}}
    eps, logs = one_group_through_the_nodes(tmp_path, ov)
    corrected = [e for e in eps if e.corrected_steps]
    assert corrected, f"no episode was corrected\n{logs}"
    for e in corrected:
        t = e.tensors
        why = f"{e.corrected_steps} steps, {t['op_executed'].tolist()}\n{logs}"
        assert e.reward == 0.0, why                 # a correction is the policy's failure
        assert t["op_actions"].shape[1:] == (mcfg.horizon, 4), why
        # one corrected chunk per operator decision (4 steps each), within the budget
        # (the rule hands back once it is spent: at most one chunk past it)
        assert len(t["op_executed"]) * 4 == e.corrected_steps <= 24 + 4, why
        assert (t["op_executed"] <= mcfg.horizon).all(), why
        assert torch.isfinite(t["op_actions"]).all()
        assert t["chains"].shape[0] >= 1            # the policy's own chunks, beside
    assert "intervene service: operator in control" in (
        tmp_path / "policy_node.log").read_text(), logs
