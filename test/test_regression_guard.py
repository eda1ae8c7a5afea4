"""The regression guard end to end: a version that evaluates worse is rolled back by itself.

policy_node, episode_manager_node (operator resets and marks) and learner_node as processes. The
test is the camera and the operator: it marks v0's evaluation episodes successes, the explore
group half and half (so the learner makes v1), and v1's evaluation episodes failures. The guard
must roll v1 back: learner_node writes v0 again as v2 (parent v0), policy_node applies it, the
log and the panel say why, and the next group runs on v2 without evaluating it again.
"""
import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from browser import chromium_page
from ros_harness import Client, SensorFeed
from std_srvs.srv import Trigger
from tinyvla_grpo_interfaces.msg import AdapterUpdate, EpisodeState
from tinyvla_grpo_interfaces.srv import MarkOutcome

from tinyvla_grpo_ros.core.checkpoint import read_safetensors, save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.launcher import Launch
from tinyvla_grpo_ros.nodes.ros_common import LATCHED

ROOT = Path(__file__).resolve().parents[1]
TASK = "reach-v3"


def test_a_version_that_evaluates_worse_is_rolled_back_automatically(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg), SamplerConfig(executed_steps=4))
    adapters, store = tmp_path / "adapters", tmp_path / "rollouts"
    common = {"checkpoint": str(ckpt), "adapter_root": str(adapters),
              "trainable_preset": "adapters"}
    launch = Launch(ROOT / "config" / "sim_loop.yaml", {
        "policy_node": common,
        "learner_node": common | {"store_root": str(store), "group_size": "2", "epochs": "1",
                                  "lr": "0.001", "device": "cpu"},
        "episode_manager_node": {
            "store_root": str(store), "group_size": "2", "init_state_ids": "[0]",
            "eval_init_state_ids": "[100, 101]", "eval_every": "1", "guard_margin": "0.3",
            "reset_mode": "operator", "max_chunks": "100000", "max_episode_s": "600.0",
            "wait_for_update_s": "120.0", "panel_port": "0"}},
        only=["policy_node", "episode_manager_node", "learner_node"], log_dir=tmp_path)
    client = Client("guard")
    n = client.node
    state, active = [EpisodeState()], []
    n.create_subscription(EpisodeState, "episode_state", lambda m: state.__setitem__(0, m),
                          LATCHED)
    n.create_subscription(AdapterUpdate, "active_adapter", lambda m: active.append(m.version),
                          LATCHED)
    feed = SensorFeed(n)
    em_log = tmp_path / "episode_manager_node.log"
    logs = lambda: "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"  # noqa: E731
                             for p in sorted(tmp_path.glob("*.log")))

    def outcome_for(group_id: str, index: int) -> int:
        if group_id.startswith("eval-") and "-v0000-" in group_id:
            return MarkOutcome.Request.SUCCESS
        if group_id.startswith("eval-"):
            return MarkOutcome.Request.FAILURE               # v1 got worse
        return MarkOutcome.Request.SUCCESS if index % 2 else MarkOutcome.Request.FAILURE

    done_marks, readied, groups_seen = set(), set(), []
    try:
        deadline = time.monotonic() + 240
        while not (active and active[-1] == 2 and any("-v0002-" in g for g in groups_seen)):
            assert time.monotonic() < deadline and launch.poll() is None, logs()
            feed.publish(np.zeros((32, 32, 3), np.uint8))
            client.spin_until(lambda: False, 0.05)
            s = state[0]
            if s.group_id and (not groups_seen or groups_seen[-1] != s.group_id):
                groups_seen.append(s.group_id)
            key = (s.group_id, s.group_index)
            if s.state == EpisodeState.RESETTING and key not in readied:
                if client.call(Trigger, "scene_ready", Trigger.Request()).success:
                    readied.add(key)
            elif s.state == EpisodeState.RUNNING and s.episode_id not in done_marks:
                r = client.call(MarkOutcome, "mark_outcome", MarkOutcome.Request(
                    episode_id=s.episode_id, outcome=outcome_for(s.group_id, s.group_index)))
                if r.accepted:                         # refused until the first chunk lands
                    done_marks.add(s.episode_id)
        text = em_log.read_text()
        assert re.search(r"regression guard: rolling back v1 to v0: regression: v1: 0\.00", text)
        assert "restored v0 as v2" in (tmp_path / "learner_node.log").read_text()
        meta2 = json.loads((adapters / TASK / "v0002" / "meta.json").read_text())
        assert meta2["parent_version"] == 0 and meta2["metrics"] == {"restored_from": 0.0}
        w0 = read_safetensors(adapters / TASK / "v0000" / "adapter_model.safetensors")
        w1 = read_safetensors(adapters / TASK / "v0001" / "adapter_model.safetensors")
        w2 = read_safetensors(adapters / TASK / "v0002" / "adapter_model.safetensors")
        assert all(torch.equal(w0[k], w2[k]) for k in w0)
        assert any(not torch.equal(w0[k], w1[k]) for k in w0)      # v1 really differed
        # v2 carries v0's evaluation: the group after the rollback explores, no eval of v2
        assert not any(g.startswith(f"eval-{TASK}-v0002") for g in groups_seen), groups_seen
        port = int(re.search(r"operator panel on http://127.0.0.1:(\d+)/", text).group(1))
        snap = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state",
                                                 timeout=5).read())
        assert {"version": 1, "rollback_to": 0} in [
            {k: e[k] for k in ("version", "rollback_to")} for e in snap["guard"]]
        with chromium_page() as page:                  # and the operator sees it
            page.goto(f"http://127.0.0.1:{port}/", timeout=10000)
            page.wait_for_function("document.getElementById('guard').textContent.includes("
                                   "'rolled back v1 to v0')", timeout=10000)
    finally:
        client.close()
        launch.stop()
