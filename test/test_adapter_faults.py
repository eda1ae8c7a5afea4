"""Adapter faults over DDS: a learner SIGKILLed mid-write, then corrupt AdapterUpdates.

Real policy_node and learner_node processes. The learner is stopped half-way through writing
v0001's tensor file (a failpoint, core/failpoints.py) and SIGKILLed there. Then: the policy keeps
serving v0 and still decides; AdapterUpdates naming the torn version, a truncated file, a wrong
sha256, a path outside the adapter root and wrong-shape tensors are each rejected with a named
error and nothing swapped; a restarted learner resumes from v0, writes v0001 whole, and the
policy takes it.
"""
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from ros_harness import Client, SensorFeed, record_chunks_and_diagnostics
from safetensors.torch import save_file
from tinyvla_grpo_interfaces.msg import AdapterUpdate, EpisodeState

from tinyvla_grpo_ros.core import atomic_io
from tinyvla_grpo_ros.core.adapters import AdaptedPolicy, AdapterConfig, list_versions
from tinyvla_grpo_ros.core.checkpoint import load_checkpoint, read_safetensors, save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.failpoints import ENV
from tinyvla_grpo_ros.core.model import Observation, TinyVLAPolicy
from tinyvla_grpo_ros.core.rollout_store import EpisodeRecord, RolloutStore
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.launcher import Launch
from tinyvla_grpo_ros.nodes.ros_common import LATCHED, LATCHED_HISTORY

ROOT = Path(__file__).resolve().parents[1]
TASK, G = "reach-v3", 4


def store_group(ckpt: Path, store_root: Path) -> None:
    """One complete group of v0 with reward variance, sampled by the checkpoint's model."""
    model, scfg, _ = load_checkpoint(ckpt)
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)
    g = torch.Generator().manual_seed(0)
    obs = Observation(torch.randint(0, 255, (G, 1, 32, 32, 3), generator=g, dtype=torch.uint8),
                      torch.zeros(G, 9), ["reach the red goal"] * G)
    chunk = sampler.sample(model, obs, g)
    store = RolloutStore(store_root)
    for j in range(G):
        store.write_episode(EpisodeRecord(
            episode_id=f"e{j}", group_id="robot-g0", task=TASK, init_state_id=0,
            adapter_name=TASK, adapter_version=0, instruction="reach the red goal",
            reward=float(j % 2), success=bool(j % 2),
            tensors={"images": obs.images[j:j + 1], "states": obs.state[j:j + 1],
                     "chains": chunk.chain[j:j + 1], "log_probs": chunk.log_probs[j:j + 1],
                     "executed": torch.tensor([chunk.executed_steps])}))


def test_learner_killed_mid_write_and_corrupt_updates_leave_the_policy_on_its_last_good_version(
        tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(cfg), SamplerConfig(executed_steps=4))
    adapters, store_root = tmp_path / "adapters", tmp_path / "rollouts"
    store_group(ckpt, store_root)
    common = {"checkpoint": str(ckpt), "adapter_root": str(adapters),
              "trainable_preset": "adapters"}
    learner = common | {"store_root": str(store_root), "group_size": str(G), "epochs": "1",
                        "lr": "0.001", "device": "cpu"}
    monkeypatch.setenv(ENV, "atomic_write@v0001/adapter_model.safetensors=pause")
    logs1 = tmp_path / "run1"
    logs1.mkdir()
    launch = Launch(ROOT / "config" / "sim_loop.yaml",
                    {"policy_node": common, "learner_node": learner},
                    only=["policy_node", "learner_node"], log_dir=logs1)
    monkeypatch.delenv(ENV)
    client = Client("adapter_faults")
    n = client.node
    active = []
    n.create_subscription(AdapterUpdate, "active_adapter", lambda m: active.append(m.version),
                          LATCHED)
    chunks, diags = record_chunks_and_diagnostics(n)
    pub_update = n.create_publisher(AdapterUpdate, "adapter_update", LATCHED_HISTORY)
    pub_ep = n.create_publisher(EpisodeState, "episode_state", LATCHED)
    feed = SensorFeed(n)
    policy_log = lambda: (logs1 / "policy_node.log").read_text()  # noqa: E731
    launch2 = None
    try:
        # 1. the learner reaches the failpoint half-way through v0001's tensors: SIGKILL it
        learner_log = logs1 / "learner_node.log"
        assert client.spin_until(lambda: "FAILPOINT" in learner_log.read_text(), 120), \
            learner_log.read_text()[-3000:]
        launch.procs["learner_node"].kill()
        launch.procs["learner_node"].wait()
        v1 = adapters / TASK / "v0001"
        assert list_versions(adapters, TASK) == [0]
        assert not (v1 / "meta.json").exists() and not (v1 / "adapter_model.safetensors").exists()
        torn = list(v1.glob(".adapter_model.safetensors.*.tmp"))
        assert len(torn) == 1 and torn[0].stat().st_size > 0      # half a file, never renamed

        # 2. the policy still serves v0 and decides
        assert client.spin_until(lambda: active and active[-1] == 0, 30)
        pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id="ep-1",
                                    task_id=TASK))

        def feed_until(pred, timeout=30.0) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                feed.publish(np.zeros((32, 32, 3), np.uint8))
                if client.spin_until(pred, 0.05):
                    return True
            return False
        assert feed_until(lambda: len(chunks) >= 2), policy_log()[-2000:]
        assert {c.adapter_version for c in chunks} == {0}
        pub_ep.publish(EpisodeState(state=EpisodeState.IDLE, episode_id="ep-1", task_id=TASK))

        # 3. corrupt AdapterUpdates, each rejected by name, nothing swapped
        v0 = adapters / TASK / "v0000"
        meta0 = json.loads((v0 / "meta.json").read_text())

        def version_copy(version: int, where: Path = adapters / TASK) -> Path:
            d = where / f"v{version:04d}"
            shutil.copytree(v0, d)
            meta = dict(meta0, version=version)
            (d / "meta.json").write_text(json.dumps(meta))
            return d
        truncated = version_copy(5)
        data = (truncated / "adapter_model.safetensors").read_bytes()
        (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 3])
        wrong_sha = version_copy(6)
        outside = version_copy(7, tmp_path / "elsewhere" / TASK)
        shapes = version_copy(8)
        state = read_safetensors(shapes / "adapter_model.safetensors")
        key = sorted(state)[0]
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
        save_file(state, shapes / "adapter_model.safetensors")
        sha8 = atomic_io.sha256_file(shapes / "adapter_model.safetensors")
        (shapes / "meta.json").write_text(json.dumps(dict(meta0, version=8, sha256=sha8)))
        cases = [(1, v1, "", "meta.json missing"), (5, truncated, "", "sha256 mismatch"),
                 (6, wrong_sha, "0" * 64, "sha256 mismatch"),
                 (7, outside, meta0["sha256"], "outside the adapter root"),
                 (8, shapes, sha8, "shape")]
        for version, path, sha, words in cases:
            pub_update.publish(AdapterUpdate(adapter_name=TASK, version=version,
                                             path=str(path), sha256=sha))
            pattern = re.compile(rf"adapter {TASK} v{version} rejected, keeping v0: .*{words}")
            assert client.spin_until(lambda p=pattern: p.search(policy_log()), 20), \
                f"v{version} not rejected for {words!r}:\n{policy_log()[-2000:]}"
        client.spin_until(lambda: False, 1.5)
        assert active[-1] == 0
        assert any("rejected" in d for d in diags), diags[-3:]
        assert launch.procs["policy_node"].poll() is None

        # 4. a new learner resumes from v0, writes v0001 whole; the policy takes it
        for d in (truncated, wrong_sha, shapes):
            shutil.rmtree(d)                       # not the learner's: it would resume from them
        logs2 = tmp_path / "run2"
        logs2.mkdir()
        launch2 = Launch(ROOT / "config" / "sim_loop.yaml", {"learner_node": learner},
                         only=["learner_node"], log_dir=logs2)
        assert client.spin_until(lambda: active and active[-1] == 1, 120), \
            (logs2 / "learner_node.log").read_text()[-3000:]
        assert list_versions(adapters, TASK) == [0, 1]
        assert not list(v1.glob(".*.tmp")), "the torn temp file was left behind"
        assert json.loads((v1 / "meta.json").read_text())["parent_version"] == 0
        policy = AdaptedPolicy(load_checkpoint(ckpt)[0], AdapterConfig(preset="adapters"),
                               [TASK])
        assert read_safetensors(v1 / "adapter_model.safetensors").keys() == \
            policy.adapter_state(TASK).keys()
    finally:
        client.close()
        launch.stop()
        if launch2 is not None:
            launch2.stop()
