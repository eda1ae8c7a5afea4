"""The closed loop over real DDS: sim, policy, episode manager and learner as separate processes.

Tiny untrained model, G=4, two groups. The test plays the operator (marks alternate success /
failure, so every group has reward variance), and SIGKILLs the episode manager mid-group.
"""
import signal
import time
from pathlib import Path

import torch
from diagnostic_msgs.msg import DiagnosticArray
from ros_harness import Client
from tinyvla_grpo_interfaces.msg import ActionChunk, AdapterUpdate, EpisodeState
from tinyvla_grpo_interfaces.srv import MarkOutcome, SelectAdapter

from tinyvla_grpo_ros.core.adapters import (
    AdaptedPolicy,
    AdapterConfig,
    read_adapter_version,
    version_dir,
)
from tinyvla_grpo_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.model import Observation, TinyVLAPolicy
from tinyvla_grpo_ros.core.rollout_store import RolloutStore
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.launcher import Launch
from tinyvla_grpo_ros.nodes.ros_common import LATCHED, LATCHED_HISTORY, RELIABLE

ROOT = Path(__file__).resolve().parents[1]
TASK = "reach-v3"


def overrides(tmp: Path, ckpt: Path) -> dict:
    ov = {"sim_node": {"image_size": 32, "max_steps": 400, "pace": "fast",
                       "idle_image_hz": 0.0},
          "policy_node": {"checkpoint": ckpt, "adapter_root": tmp / "adapters",
                          "trainable_preset": "adapters", "lora_rank": 4},
          "episode_manager_node": {"group_size": 4, "num_groups": 2, "init_state_ids": "[3]",
                                   "eval_init_state_ids": "[-1]", "max_chunks": 1000,
                                   "max_episode_s": 15.0, "store_root": tmp / "rollouts",
                                   "panel_port": 0},
          "learner_node": {"checkpoint": ckpt, "adapter_root": tmp / "adapters",
                           "store_root": tmp / "rollouts", "group_size": 4, "lr": 0.001,
                           "trainable_preset": "adapters", "lora_rank": 4, "epochs": 2}}
    return {n: {k: str(v) for k, v in d.items()} for n, d in ov.items()}


def mark(client, episode_id, outcome):
    """Right after the SIGKILL, discovery may still list the dead manager's service and the
    request may reach only it; like an operator, click again (marks are idempotent)."""
    for attempt in range(4):
        try:
            return client.call(MarkOutcome, "mark_outcome", MarkOutcome.Request(
                episode_id=episode_id, outcome=outcome), timeout=8.0)
        except TimeoutError:
            if attempt == 3:
                raise


def test_closed_loop_learns_swaps_and_survives_a_killed_episode_manager(tmp_path):
    torch.manual_seed(0)
    mcfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(mcfg),
                           SamplerConfig(executed_steps=4))
    (tmp_path / "logs").mkdir()
    (tmp_path / "adapters").mkdir()          # metrics of an older release, other columns
    (tmp_path / "adapters" / "learner_metrics.csv").write_text(
        "task,version,group_id,loss\nreach-v3,7,old-group,0.5\n")
    ov = overrides(tmp_path, ckpt)
    launch = Launch(ROOT / "config" / "sim_loop.yaml", ov, log_dir=tmp_path / "logs")
    client = Client("operator")
    n = client.node
    seen = {"state": EpisodeState(), "active": [], "chunks": [], "updates": [], "missed": [],
            "missed_by_swap": []}
    n.create_subscription(EpisodeState, "episode_state", lambda m: seen.__setitem__("state", m),
                          LATCHED)
    n.create_subscription(AdapterUpdate, "active_adapter", lambda m: seen["active"].append(
        m.version), LATCHED)
    n.create_subscription(AdapterUpdate, "adapter_update", seen["updates"].append,
                          LATCHED_HISTORY)
    n.create_subscription(ActionChunk, "action_chunk", seen["chunks"].append, RELIABLE)
    n.create_subscription(DiagnosticArray, "/diagnostics", lambda m: [
        seen[kv.key].append(int(kv.value)) for s in m.status for kv in s.values
        if kv.key in ("missed", "missed_by_swap")], 10)
    store = RolloutStore(tmp_path / "rollouts")
    marked, killed, restarted = [], False, None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            client.spin_until(lambda: False, 0.05)
            assert launch.poll() is None or killed, f"a node died: {launch.poll()}"
            st = seen["state"]
            # play the operator: mark each running episode once it has a few chunks
            ep_chunks = [c for c in seen["chunks"] if c.episode_id == st.episode_id]
            if st.state == EpisodeState.RUNNING and st.episode_id not in marked and \
                    len(ep_chunks) >= 3:
                outcome = MarkOutcome.Request.SUCCESS if len(marked) % 2 == 0 else \
                    MarkOutcome.Request.FAILURE
                resp = mark(client, st.episode_id, outcome)
                if "no action chunk yet" in resp.message:
                    continue                       # the manager has not seen a chunk: later
                # refused only when the episode ended first (simulator success or timeout)
                # or a retried mark already landed
                assert resp.accepted or "already marked" in resp.message or \
                    "not running" in resp.message, resp.message
                again = mark(client, st.episode_id, 0)
                assert not again.accepted                      # a double click marks once
                marked.append(st.episode_id)
            # kill the episode manager mid-group 2, once two of its episodes are stored
            groups = store.groups(TASK)
            if not killed and len(groups) == 2 and \
                    len(store.episode_ids(TASK, groups[1])) == 2 and st.state == \
                    EpisodeState.RUNNING:
                before_kill = set(store.episode_ids(TASK, groups[1]))
                launch.procs["episode_manager_node"].send_signal(signal.SIGKILL)
                launch.procs["episode_manager_node"].wait()
                killed = True
                restarted = Launch(ROOT / "config" / "sim_loop.yaml",
                                   {"episode_manager_node": ov["episode_manager_node"]},
                                   only=["episode_manager_node"], log_dir=tmp_path)
            if len(groups) == 2 and len(store.episode_ids(TASK, groups[1])) == 4 and \
                    any(u.version == 2 for u in seen["updates"]):
                break
        else:
            raise AssertionError("the loop did not finish two groups and two updates in time; "
                                 + (tmp_path / "logs" / "learner_node.log").read_text()[-1500:])
        client.spin_until(lambda: 2 in seen["active"], 20)
        # roll back to v1 between groups; a version that does not exist is refused
        back = client.call(SelectAdapter, "select_adapter",
                           SelectAdapter.Request(adapter_name=TASK, version=1))
        assert back.accepted, back.message
        missing = client.call(SelectAdapter, "select_adapter",
                              SelectAdapter.Request(adapter_name=TASK, version=99))
        assert not missing.accepted and "v0099" in missing.message
        assert client.spin_until(lambda: seen["active"][-1] == 1, 10)
    finally:
        client.close()
        if restarted:
            restarted.stop()
        launch.stop()

    groups = store.groups(TASK)
    g1, g2 = (store.read_group(TASK, g) for g in groups)
    # a group never mixes versions; the second group ran on the hot-swapped v1
    assert {e.adapter_version for e in g1} == {0} and {e.adapter_version for e in g2} == {1}
    assert len(g1) == 4 and len(g2) == 4
    assert all(e.decided_by in ("operator", "timeout", "simulator") for e in g1 + g2)
    # nothing stored before the kill was lost, and the group resumed under the same id
    assert killed and before_kill <= {e.episode_id for e in g2}
    # the policy's latched version moved 0 -> 1 -> 2; later chunks carry the new version
    assert seen["active"][0] == 0 and {1, 2} <= set(seen["active"])
    v1_chunks = [c for c in seen["chunks"] if c.adapter_version == 1 and c.episode_id]
    assert v1_chunks and all(c.episode_id in {e.episode_id for e in g2} | set(marked)
                             for c in v1_chunks)
    # the learner's first minibatch re-scored the stored chunks to ratio 1
    first = [u for u in seen["updates"] if u.version == 1][0]
    metrics = dict(zip(first.metric_names, first.metric_values))
    assert metrics["first_ratio_max_dev"] < 1e-4 and metrics["optimizer_steps"] >= 1
    # and so does an independent re-scoring of every stored chunk of v0
    model, scfg, _ = load_checkpoint(ckpt)
    policy = AdaptedPolicy(model, AdapterConfig(preset="adapters", rank=4), [TASK])
    state, _ = read_adapter_version(version_dir(tmp_path / "adapters", TASK, 0))
    policy.load_adapter_state(state)
    sampler = DiffusionSampler(model.config, scfg)
    for ep in g1:
        t = ep.tensors
        obs = Observation(t["images"], t["states"], [ep.instruction] * len(t["states"]))
        with torch.no_grad():
            lp = sampler.chain_log_prob(policy.model, obs, t["chains"], int(t["executed"][0]))
        assert torch.allclose(torch.exp(lp - t["log_probs"]), torch.ones_like(lp), atol=1e-4)
    # the policy node reports its missed decision points. Their number is not asserted: four
    # nodes and a learner share two cores here, so a slow sample depends on the machine's load,
    # and swaps land between groups (above). bench_nodes.py measures missed_decisions, and
    # missed_decisions_by_swap, during swaps between chunks at the full decision rate.
    assert seen["missed"] and seen["missed_by_swap"]
    # the new rows come under a header of their own columns, after the old release's rows
    lines = (tmp_path / "adapters" / "learner_metrics.csv").read_text().splitlines()
    heads = [i for i, ln in enumerate(lines) if ln.startswith("task,version,group_id")]
    assert heads[0] == 0 and len(heads) == 2 and "approx_kl" in lines[heads[1]].split(",")
    assert all(len(ln.split(",")) == len(lines[heads[1]].split(",")) for ln in lines[2:]
               if not ln.startswith("task,"))
