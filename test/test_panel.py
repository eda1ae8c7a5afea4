"""The operator panel in a real headless Chromium (Playwright) against the running nodes."""
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from browser import chromium_page

from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
from tinyvla_grpo_ros.core.config import ModelConfig, SamplerConfig
from tinyvla_grpo_ros.core.model import TinyVLAPolicy
from tinyvla_grpo_ros.core.rollout_store import RolloutStore
from tinyvla_grpo_ros.launcher import Launch
from tinyvla_grpo_ros.nodes.panel_server import PanelServer

ROOT = Path(__file__).resolve().parents[1]


class FakeBackend:
    def snapshot(self):
        return {"ok": True}

    def mark_episode(self, episode_id, outcome, source):
        return True, "marked"

    def scene_is_ready(self):
        return False, "no"

    def set_paused(self, paused):
        return True, "paused"

    def rollback(self, version):
        return True, f"v{version}"

    def thumbnail_jpeg(self):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, json.loads(r.read())


def test_panel_beyond_localhost_needs_a_token_and_keeps_it_out_of_urls():
    with pytest.raises(ValueError, match="panel_token"):
        PanelServer(FakeBackend(), host="0.0.0.0", port=0)
    panel = PanelServer(FakeBackend(), host="127.0.0.1", port=0, token="s3cret")
    panel.start()
    try:
        base = f"http://127.0.0.1:{panel.port}"
        with pytest.raises(urllib.error.HTTPError) as e:
            get(base + "/api/state")
        assert e.value.code == 401
        assert get(base + "/api/state", {"X-Panel-Token": "s3cret"}) == (200, {"ok": True})
        with pytest.raises(urllib.error.HTTPError) as e:       # not in an API URL
            get(base + "/api/state?token=s3cret")
        assert e.value.code == 401
        # opening the page with ?token= once sets an HttpOnly cookie that carries it after
        with urllib.request.urlopen(base + "/?token=s3cret", timeout=5) as r:
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert get(base + "/api/state", {"Cookie": cookie.split(";")[0]})[0] == 200
    finally:
        panel.stop()


def test_the_thumbnail_is_a_small_jpeg_whatever_the_camera():
    import numpy as np

    from tinyvla_grpo_ros.core.inputs import thumbnail_jpeg
    frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    jpeg = thumbnail_jpeg(frame)
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) < 40_000


@pytest.fixture
def running_loop(tmp_path):
    torch.manual_seed(0)
    mcfg = ModelConfig.preset("tiny", image_size=32, state_dim=9, action_dim=4)
    ckpt = save_checkpoint(tmp_path / "sft", TinyVLAPolicy(mcfg), SamplerConfig(executed_steps=4))
    port = free_port()
    ov = {"sim_node": {"image_size": 32, "max_steps": 10000, "pace": "wall"},
          "policy_node": {"checkpoint": ckpt, "adapter_root": tmp_path / "adapters",
                          "trainable_preset": "adapters"},
          "episode_manager_node": {"group_size": 2, "num_groups": 1, "init_state_ids": "[4]",
                                   "eval_init_state_ids": "[-1]", "max_episode_s": 120.0,
                                   "max_chunks": 100000, "store_root": tmp_path / "rollouts",
                                   "panel_port": port}}
    ov = {n: {k: str(v) for k, v in d.items()} for n, d in ov.items()}
    launch = Launch(ROOT / "config" / "sim_loop.yaml", ov,
                    only=["sim_node", "policy_node", "episode_manager_node"], log_dir=tmp_path)
    yield f"http://127.0.0.1:{port}", RolloutStore(tmp_path / "rollouts"), launch, tmp_path
    launch.stop()


def test_panel_marks_once_on_double_click_and_the_chart_updates(running_loop):
    url, store, launch, tmp = running_loop
    with chromium_page() as page:
        from playwright.sync_api import Error as PlaywrightError
        deadline = time.monotonic() + 60
        while True:                                  # the node may still be starting
            try:
                page.goto(url + "/", timeout=5000)
                break
            except PlaywrightError:
                assert time.monotonic() < deadline and launch.poll() is None, \
                    (tmp / "episode_manager_node.log").read_text()[-2000:]
                time.sleep(0.5)
        assert "operator panel" in page.title()
        page.wait_for_function("document.getElementById('state').textContent === 'RUNNING'",
                               timeout=60000)
        assert page.get_attribute("#chart", "data-points") == "0"
        page.wait_for_function("parseInt(document.getElementById('chunks').textContent) > 0",
                               timeout=60000)
        episode = page.text_content("#episode")
        page.dblclick("#success")                    # an operator's double click
        page.wait_for_function(
            "document.getElementById('episode').textContent !== " + json.dumps(episode),
            timeout=30000)
        # stored exactly once, as a success decided by the operator
        deadline = time.monotonic() + 30
        while not store.groups("reach-v3") or not store.episode_ids(
                "reach-v3", store.groups("reach-v3")[0]):
            assert time.monotonic() < deadline, "the marked episode was not stored"
            time.sleep(0.1)
        gid = store.groups("reach-v3")[0]
        eps = store.read_group("reach-v3", gid, with_tensors=False)
        assert [e.episode_id for e in eps] == [episode]
        assert eps[0].reward == 1.0 and eps[0].decided_by == "operator"
        state = json.loads(page.evaluate("fetch('/api/state').then(r => r.text())"))
        assert state["marks_accepted"] == 1
        # the chart shows the new point; the camera thumbnail is live
        page.wait_for_function("document.getElementById('chart').dataset.points === '1'",
                               timeout=10000)
        page.wait_for_function("document.getElementById('thumb').naturalWidth > 0",
                               timeout=10000)
        # the keyboard shortcut marks the next episode a failure
        page.wait_for_function("document.getElementById('state').textContent === 'RUNNING' && "
                               "parseInt(document.getElementById('chunks').textContent) > 0",
                               timeout=60000)
        second = page.text_content("#episode")
        page.keyboard.press("f")
        deadline = time.monotonic() + 30
        while len(store.episode_ids("reach-v3", gid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        eps = store.read_group("reach-v3", gid, with_tensors=False)
        assert {e.episode_id: e.reward for e in eps}[second] == 0.0
        page.screenshot(path=str(tmp / "panel.png"))


def test_hold_to_intervene_hands_the_arm_to_the_operator_and_the_correction_is_stored(
        running_loop):
    """The panel's hold-to-intervene button through the real nodes: while it is held the
    panel says the operator is in control and policy_node forwards a teleop device's
    operator_action to the simulator; letting go hands back; the episode is stored with its
    corrected chunks, as a failure of the policy, and the chart shows the corrected share."""
    from ros_harness import Client
    from sensor_msgs.msg import JointState

    from tinyvla_grpo_ros.nodes.ros_common import RELIABLE
    url, store, launch, tmp = running_loop
    client = Client("teleop")
    pub = client.node.create_publisher(JointState, "operator_action", RELIABLE)
    teleop = client.node.create_timer(0.05, lambda: pub.publish(JointState(
        name=["ee_dx", "ee_dy", "ee_dz", "gripper"], position=[0.2, 0.0, -0.1, 0.0])))
    try:
        with chromium_page() as page:
            from playwright.sync_api import Error as PlaywrightError
            deadline = time.monotonic() + 60
            while True:
                try:
                    page.goto(url + "/", timeout=5000)
                    break
                except PlaywrightError:
                    assert time.monotonic() < deadline and launch.poll() is None
                    time.sleep(0.5)
            page.wait_for_function(
                "document.getElementById('state').textContent === 'RUNNING' && "
                "parseInt(document.getElementById('chunks').textContent) > 0", timeout=60000)
            episode = page.text_content("#episode")
            assert page.text_content("#control") == "policy"
            page.hover("#intervene")
            page.mouse.down()                                  # held down ...
            deadline = time.monotonic() + 30
            while page.text_content("#control") != "operator":
                client.spin_until(lambda: False, 0.1)
                assert time.monotonic() < deadline, (tmp / "policy_node.log").read_text()[-2000:]
            chunks = int(page.text_content("#chunks"))
            deadline = time.monotonic() + 30
            while int(page.text_content("#chunks")) < chunks + 3:    # operator chunks run
                client.spin_until(lambda: False, 0.1)
                assert time.monotonic() < deadline, (tmp / "policy_node.log").read_text()[-2000:]
            page.mouse.up()                                    # ... and let go
            deadline = time.monotonic() + 30
            while page.text_content("#control") != "policy":
                client.spin_until(lambda: False, 0.1)
                assert time.monotonic() < deadline
            assert page.text_content("#episode") == episode
            page.click("#success")
            deadline = time.monotonic() + 30
            while not store.groups("reach-v3") or not store.episode_ids(
                    "reach-v3", store.groups("reach-v3")[0]):
                assert time.monotonic() < deadline, "the corrected episode was not stored"
                time.sleep(0.1)
            (rec,) = store.read_group("reach-v3", store.groups("reach-v3")[0])
            assert rec.episode_id == episode and rec.success and rec.reward == 0.0
            assert rec.corrected_steps >= 3 * 4 and rec.corrected_steps % 4 == 0
            acts = rec.tensors["op_actions"]
            assert acts.shape[0] >= 3 and torch.isfinite(acts).all()
            page.wait_for_function(
                "document.getElementById('chart').dataset.corrected === '1'", timeout=10000)
            page.screenshot(path=str(tmp / "panel_intervene.png"))
    finally:
        client.node.destroy_timer(teleop)
        client.close()
