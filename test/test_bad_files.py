"""No crash from a bad file: every node starts on a store and an adapter root with garbage in
them, names each bad file, quarantines or skips it, and its services answer with the reason."""
import json
import time

import torch
from ros_harness import Client
from test_launch_namespaces_shutdown import SIM_LOOP, logs, wait_ready
from test_recipe import tiny_checkpoint
from tinyvla_grpo_interfaces.srv import SelectAdapter

from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig, save_adapter_version
from tinyvla_grpo_ros.core.atomic_io import sha256_file
from tinyvla_grpo_ros.core.checkpoint import load_checkpoint
from tinyvla_grpo_ros.core.rollout_store import RolloutStore, episode_record
from tinyvla_grpo_ros.launcher import Launch

TASK = "reach-v3"


def frame():
    return {"images": torch.zeros(1, 32, 32, 3, dtype=torch.uint8), "states": torch.zeros(9),
            "chains": torch.zeros(4, 8, 4), "log_probs": torch.zeros(3), "executed": 4}


def test_every_node_starts_on_bad_files_names_them_and_answers(tmp_path):
    ckpt = tiny_checkpoint(tmp_path)
    root, store_root = tmp_path / "adapters", tmp_path / "rollouts"
    model, _, _ = load_checkpoint(ckpt)
    policy = AdaptedPolicy(model, AdapterConfig(preset="adapters"), [TASK])
    for v in range(5):
        save_adapter_version(policy, root, v, parent=None if v == 0 else v - 1)
    vdir = lambda v: root / TASK / f"v{v:04d}"  # noqa: E731
    (vdir(1) / "meta.json").write_text("[1, 2]")                              # a list
    meta = json.loads((vdir(2) / "meta.json").read_text())
    (vdir(2) / "meta.json").write_text(json.dumps({k: v for k, v in meta.items()
                                                   if k != "sha256"}))       # no sha256
    meta = json.loads((vdir(3) / "meta.json").read_text())
    (vdir(3) / "meta.json").write_text(json.dumps(meta | {"version": None}))  # version null
    garbage = vdir(4) / "adapter_model.safetensors"           # torn tensors, a matching sha
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    meta = json.loads((vdir(4) / "meta.json").read_text())
    (vdir(4) / "meta.json").write_text(json.dumps(meta | {"sha256": sha256_file(garbage)}))
    store = RolloutStore(store_root)
    for j in range(4):
        store.write_episode(episode_record(
            [frame()], success=bool(j % 2), episode_id=f"e{j}", group_id="robot-g1",
            task=TASK, init_state_id=3, adapter_name=TASK, adapter_version=0, instruction="x"))
    store.write_episode(episode_record(
        [frame()], success=True, episode_id="e0", group_id="robot-g2", task=TASK,
        init_state_id=4, adapter_name=TASK, adapter_version=0, instruction="x"))
    g1 = store_root / TASK / "robot-g1"
    (g1 / "e1" / "episode.json").write_text("{}")
    (g1 / "e2" / "episode.json").write_bytes(b"\x00garbage")
    (g1 / "e3" / "chunks.safetensors").write_bytes(b"torn")
    (store_root / TASK / "robot-g2" / "group.json").write_text("not json")
    (root / "learner_metrics.csv").write_text("task,version,group_id\ntorn")
    paths = {"checkpoint": str(ckpt), "adapter_root": str(root)}
    launch = Launch(SIM_LOOP, {
        "policy_node": paths | {"trainable_preset": "adapters"},
        "learner_node": paths | {"store_root": str(store_root), "trainable_preset": "adapters",
                                 "group_size": "2"},
        "episode_manager_node": {"store_root": str(store_root), "panel_port": "-1",
                                 "group_size": "2", "auto_start": "false"}},
        only=["policy_node", "learner_node", "episode_manager_node"], log_dir=tmp_path)
    client = Client("bad_files")
    try:
        wait_ready(launch, tmp_path, ["policy_node", "learner_node", "episode_manager_node"])
        time.sleep(1.0)
        text = logs(tmp_path, tail=None)  # every complaint, however long the log
        for words in ("cannot read " + str(vdir(4) / "adapter_model.safetensors"),
                      "v0003/meta.json: 'version' must be an integer",
                      "v0002/meta.json: 'sha256' must be 64 hex digits",
                      "v0001/meta.json: must be a JSON object",
                      "robot-g2/group.json: not readable JSON",
                      "e1/episode.json: 'task' must be str",
                      "e2/episode.json: not readable JSON",
                      "e3/chunks.safetensors"):
            assert words in text, f"{words!r} not said\n{text}"
        assert "learner ready" in text and "versions {'reach-v3': 0}" in text
        quarantined = sorted(p.name for p in (store_root / ".quarantine").iterdir())
        assert len(quarantined) == 4, quarantined                    # g2, e1, e2, e3
        assert [e.episode_id for e in store.read_group(TASK, "robot-g1")] == ["e0"]
        for service, v, words in (("select_adapter", 1, "must be a JSON object"),
                                  ("select_adapter", 4, "cannot read"),
                                  ("restore_adapter", 2, "sha256"),
                                  ("restore_adapter", 3, "'version' must be")):
            r = client.call(SelectAdapter, service, SelectAdapter.Request(
                adapter_name=TASK, version=v), timeout=30)
            assert not r.accepted and words in r.message, (service, v, r.message)
        assert launch.poll() is None, logs(tmp_path)
    finally:
        client.close()
        launch.stop()
