"""The project's launcher as a ROS user starts nodes: under a namespace the params file still
applies (its /**/ keys), and however a node is asked to stop it exits 0 and leaves no error."""
import re
import signal
import time

import pytest
from rcl_interfaces.srv import GetParameters
from ros_harness import ROOT, Client
from test_recipe import tiny_checkpoint

from tinyvla_grpo_ros.launcher import Launch, node_sections

SIM_LOOP = ROOT / "config" / "sim_loop.yaml"
NODES = ["policy_node", "episode_manager_node", "learner_node"]


def start(tmp_path, ns="", robots=None):
    ckpt = str(tiny_checkpoint(tmp_path))
    paths = {"adapter_root": str(tmp_path / "adapters")}
    over = {"policy_node": {"checkpoint": ckpt, "device": "cpu"} | paths,
            "learner_node": {"checkpoint": ckpt, "store_root": str(tmp_path / "rollouts")}
            | paths,
            "episode_manager_node": {"store_root": str(tmp_path / "rollouts"),
                                     "panel_port": "-1"}}
    return Launch(SIM_LOOP, over, only=NODES, ns=ns, log_dir=tmp_path, robots=robots)


def wait_ready(launch, tmp_path, labels, timeout=90.0):
    deadline = time.monotonic() + timeout
    ready = {"policy_node": "policy ready", "episode_manager_node": "episode manager:",
             "learner_node": "learner ready"}
    while time.monotonic() < deadline:
        assert launch.poll() is None, logs(tmp_path)
        if all(ready[label.split(".")[-1]] in (tmp_path / f"{label}.log").read_text()
               for label in labels):
            return
        time.sleep(0.2)
    raise AssertionError(f"not ready in {timeout} s\n{logs(tmp_path)}")


def logs(tmp_path, tail=2500):
    """Each node's log (its last `tail` characters; None: all of it), for assertions to show."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-tail if tail else 0:]}"
                     for p in tmp_path.glob("*.log"))


def parameters(client, node, names):
    resp = client.call(GetParameters, f"{node}/get_parameters", GetParameters.Request(
        names=names))
    out = {}
    for name, v in zip(names, resp.values):
        out[name] = [v.bool_value, v.integer_value, v.double_value, v.string_value,
                     list(v.byte_array_value), list(v.bool_array_value),
                     list(v.integer_array_value), list(v.double_array_value),
                     list(v.string_array_value)][v.type - 1] if v.type else None
    return out


@pytest.mark.parametrize("robots", [None, ["/arm1", "/arm2"]], ids=["ns", "robots"])
def test_a_namespaced_node_reports_the_params_files_values(tmp_path, robots):
    launch = start(tmp_path, ns="" if robots else "/arm1", robots=robots)
    labels = [f"{r.strip('/')}.{n}" for r in robots for n in NODES if n != "learner_node"] + \
        ["learner_node"] if robots else NODES
    client = Client()
    try:
        wait_ready(launch, tmp_path, labels)
        yaml = node_sections(SIM_LOOP)
        for ns in (robots or ["/arm1"]):
            for node in ("policy_node", "episode_manager_node"):
                want = {k: v for k, v in yaml[node].items()
                        if k not in ("checkpoint", "panel_port", "device")}   # set by start()
                got = parameters(client, f"{ns}/{node}", list(want))
                for k, v in want.items():
                    assert got[k] == v, f"{ns}/{node}.{k}: {got[k]!r}, the YAML says {v!r}"
        learner_ns = "" if robots else "/arm1"
        want = {k: v for k, v in yaml["learner_node"].items() if k != "checkpoint"}
        assert parameters(client, f"{learner_ns}/learner_node", list(want)) == want
    finally:
        client.close()
        launch.stop()


@pytest.mark.parametrize("how", ["sigint", "sigint_twice", "sigterm"])
def test_every_node_exits_0_cleanly_however_it_is_stopped(tmp_path, how):
    launch = start(tmp_path)
    wait_ready(launch, tmp_path, NODES)
    time.sleep(1.0)                     # timers, diagnostics and the panel are running
    sig = signal.SIGTERM if how == "sigterm" else signal.SIGINT
    for p in launch.procs.values():
        p.send_signal(sig)
    t0 = time.monotonic()
    while how == "sigint_twice" and time.monotonic() - t0 < 15 and \
            any(p.poll() is None for p in launch.procs.values()):
        # a terminal's Ctrl-C under ros2 launch: a second SIGINT, early or late in the exit
        time.sleep(0.1)
        for p in launch.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
    for label, p in launch.procs.items():
        p.wait(timeout=20)
        assert p.returncode == 0, f"{label} exited {p.returncode}\n{logs(tmp_path)}"
    assert time.monotonic() - t0 < 15
    text = logs(tmp_path)
    for bad in ("Traceback", "context is invalid", "terminate called", "Failed to publish",
                "never retrieved"):
        assert bad not in text, f"{bad!r} after {how}\n{text}"
    assert not re.search(r"\[ERROR\]", text), text


def test_a_learner_stopped_mid_update_exits_0_and_writes_no_torn_version(tmp_path):
    """A stored group of the SFT version is learned from at start; SIGINT lands during that
    update: the learner stops at its next minibatch, exits 0, and v0000 stays the newest."""
    import torch

    from tinyvla_grpo_ros.core.checkpoint import load_checkpoint
    from tinyvla_grpo_ros.core.rollout_store import RolloutStore, episode_record
    from tinyvla_grpo_ros.core.sampler import DiffusionSampler
    from tinyvla_grpo_ros.core.synthetic import random_obs
    ckpt = tiny_checkpoint(tmp_path)
    model, scfg, _ = load_checkpoint(ckpt)
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)
    store = RolloutStore(tmp_path / "rollouts")
    obs = random_obs(model.config, B=60)
    chunk = sampler.sample(model, obs, torch.Generator().manual_seed(0))
    frames = [{"images": obs.images[i], "states": obs.state[i], "chains": chunk.chain[i],
               "log_probs": chunk.log_probs[i], "executed": 4} for i in range(60)]
    for j in range(8):                      # 8 episodes x 60 chunks: a many-step update
        store.write_episode(episode_record(
            frames, success=bool(j % 2), episode_id=f"e{j}", group_id="robot-g0",
            task="reach-v3", init_state_id=0, adapter_name="reach-v3", adapter_version=0,
            instruction="reach"))
    launch = Launch(SIM_LOOP, {"learner_node": {
        "checkpoint": str(ckpt), "adapter_root": str(tmp_path / "adapters"),
        "store_root": str(tmp_path / "rollouts"), "minibatch_size": "16",
        "micro_batch_size": "16", "target_kl": "0.0"}}, only=["learner_node"],
        log_dir=tmp_path)
    wait_ready(launch, tmp_path, ["learner_node"])
    time.sleep(0.5)
    proc = launch.procs["learner_node"]
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    text = logs(tmp_path)
    assert proc.returncode == 0, text
    assert "at shutdown; no version written, v0 stays the newest" in text, text
    versions = sorted(p.name for p in (tmp_path / "adapters" / "reach-v3").iterdir())
    assert versions == ["v0000"], versions                    # no torn or partial v0001
