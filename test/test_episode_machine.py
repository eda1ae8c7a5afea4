"""The episode manager's state machine, without ROS: groups, marks, timeouts, resume, guard."""
import time

import numpy as np
import pytest
import torch

from tinyvla_grpo_ros.core import episode_machine as em
from tinyvla_grpo_ros.core.rollout_store import RolloutStore, episode_record


class FakePort:
    """Records what the machine asks of its node (the node's publishers and clients)."""

    def __init__(self):
        self.states, self.outcomes, self.groups, self.resets, self.rollbacks = [], [], [], [], []
        self.logs = []
        self.machine = None

    def publish_state(self):
        self.states.append(self.machine.state if self.machine else None)

    def publish_outcome(self, o):
        self.outcomes.append(o)

    def publish_group(self, g):
        self.groups.append(g)

    def request_reset(self, init_state_id):
        self.resets.append(init_state_id)

    def request_rollback(self, version):
        self.rollbacks.append(version)

    def log(self, level, text):
        self.logs.append((level, text))


def frame():
    return {"images": np.zeros((1, 4, 4, 3), np.uint8), "states": np.zeros(3, np.float32),
            "chains": np.zeros((2, 4, 2), np.float32), "log_probs": np.zeros(1, np.float32),
            "executed": 4}


def make(tmp_path, robot="robot", **cfg):
    port = FakePort()
    base = dict(task="reach-v3", group_size=2, init_state_ids=(3, 4), max_chunks=3)
    m = em.EpisodeMachine(em.EpisodeManagerConfig(**(base | cfg)), RolloutStore(tmp_path),
                          robot, port)
    port.machine = m
    return m, port


def run_episode(m, port, success=None, chunks=1, version=0):
    """Reset (service mode), run `chunks` chunks, end by the simulator's success or timeout."""
    assert m.state == em.RESETTING
    m.reset_finished(True, "")
    assert m.state == em.RUNNING
    for _ in range(chunks):
        assert m.add_chunk(m.ep.episode_id, frame(), "reach-v3", version, "reach")
    if success:
        m.sim_succeeded(True)
    m.step(time.monotonic() + (0.0 if success else 100.0))


def test_a_group_runs_g_episodes_stores_them_and_reports_the_group(tmp_path):
    m, port = make(tmp_path)
    m.step()
    assert m.state == em.IDLE and not port.resets         # no adapter version yet
    m.set_version(0)
    m.step()
    assert m.state == em.RESETTING and port.resets == [m.ep.init_state_id]
    run_episode(m, port, success=True)
    run_episode(m, port, success=False)
    assert [o["success"] for o in port.outcomes] == [True, False]
    assert [o["decided_by"] for o in port.outcomes] == ["simulator", "timeout"]
    (g,) = port.groups
    assert g["rewards"] == [0.0, 1.0] or g["rewards"] == [1.0, 0.0]
    assert len(m.store.read_group("reach-v3", g["group_id"])) == 2
    assert m.state == em.WAITING_FOR_UPDATE               # the group had signal
    m.set_version(1)
    m.step()
    assert m.state == em.IDLE


def test_a_group_without_signal_goes_straight_on(tmp_path):
    m, port = make(tmp_path)
    m.set_version(0)
    m.step()
    run_episode(m, port, success=True)
    run_episode(m, port, success=True)
    assert m.state == em.IDLE and len(port.groups) == 1


def test_an_episode_is_marked_once_and_not_before_its_first_chunk(tmp_path):
    m, port = make(tmp_path, reset_mode="operator")
    m.set_version(0)
    m.step()
    assert m.state == em.RESETTING and not port.resets    # the operator resets
    assert m.mark("", "success", "panel")[0] is False      # nothing running
    assert m.scene_is_ready() == (True, "starting the episode")
    m.step()
    assert m.state == em.RUNNING
    ok, text = m.mark("", "success", "panel")
    assert not ok and "no action chunk" in text
    m.add_chunk(m.ep.episode_id, frame(), "reach-v3", 0, "reach")
    assert m.mark("", "failure", "panel")[0]
    assert m.mark("", "success", "joy") == (False, f"episode {m.ep.episode_id} is already marked")
    assert m.mark("", "bogus", "joy")[0] is False
    m.step()
    assert port.outcomes[-1]["success"] is False and port.outcomes[-1]["decided_by"] == "operator"
    assert m.marks == {"accepted": 1, "refused": 3}


def test_a_discarded_episode_is_run_again_and_never_stored(tmp_path):
    m, port = make(tmp_path, reset_mode="operator")
    m.set_version(0)
    m.step()
    m.scene_is_ready()
    m.step()
    m.add_chunk(m.ep.episode_id, frame(), "reach-v3", 0, "reach")
    m.mark("", "discard", "panel")
    m.step()
    assert m.state == em.RESETTING and m.group_index == 0 and not port.outcomes
    assert m.store.groups("reach-v3") == []


def test_chunks_of_another_episode_or_of_two_versions_are_not_stored(tmp_path):
    m, port = make(tmp_path)
    m.set_version(0)
    m.step()
    m.reset_finished(True, "")
    assert not m.add_chunk("ep-other", frame(), "reach-v3", 0, "reach")
    m.add_chunk(m.ep.episode_id, frame(), "reach-v3", 0, "reach")
    m.add_chunk(m.ep.episode_id, frame(), "reach-v3", 1, "reach")
    m.step(time.monotonic() + 100.0)
    assert not port.outcomes and m.state == em.RESETTING   # run again
    assert any("several versions" in t for _, t in port.logs)


def test_timeout_by_chunk_count(tmp_path):
    m, port = make(tmp_path, max_chunks=2)
    m.set_version(0)
    m.step()
    m.reset_finished(True, "")
    for _ in range(2):
        m.add_chunk(m.ep.episode_id, frame(), "reach-v3", 0, "reach")
    m.step()
    assert port.outcomes[-1]["decided_by"] == "timeout"


def test_a_failed_reset_is_asked_again(tmp_path):
    m, port = make(tmp_path)
    m.set_version(0)
    m.step()
    m.reset_finished(False, "sim busy")
    assert m.state == em.RESETTING and len(port.resets) == 2


def _group(store, gid, init_id, successes):
    for j, s in enumerate(successes):
        store.write_episode(episode_record(
            [{"images": torch.zeros(1, 4, 4, 3, dtype=torch.uint8), "states": torch.zeros(3),
              "chains": torch.zeros(2, 4, 2), "log_probs": torch.zeros(1), "executed": 4}],
            success=s, episode_id=f"{gid}-e{j}", group_id=gid, task="reach-v3",
            init_state_id=init_id, adapter_name="reach-v3", adapter_version=0,
            instruction="x"))


def test_restart_reads_this_robots_complete_groups_and_resumes_its_unfinished_one(tmp_path):
    store = RolloutStore(tmp_path)
    _group(store, "robot-reach-v3-v0000-s00003-aaaaaa", 3, [True, False])
    _group(store, "robot-reach-v3-v0000-s00003-bbbbbb", 3, [True, True])    # 3's latest
    _group(store, "robot-reach-v3-v0000-s00004-cccccc", 4, [False])         # incomplete
    _group(store, "arm2-reach-v3-v0000-s00005-dddddd", 5, [True, False])    # another robot
    _group(store, "eval-reach-v3-v0000-eeee", 6, [True, True])              # evaluation
    m, port = make(tmp_path, init_state_ids=(3, 4, 5, 6))
    assert m.groups_done == 2 and m.latest == {3: (2, 2)}
    m.set_version(0)
    m.step()
    assert m.group_id == "robot-reach-v3-v0000-s00004-cccccc" and m.group_index == 1
    run_episode(m, port, success=True)
    assert port.groups[-1]["group_id"] == "robot-reach-v3-v0000-s00004-cccccc"
    assert m.latest == {3: (2, 2), 4: (1, 2)} and m.groups_done == 3


def test_an_evaluation_that_falls_asks_for_a_rollback_and_a_failed_one_pauses(tmp_path):
    m, port = make(tmp_path, eval_init_state_ids=(10,), guard_margin=0.25)
    m.set_version(0)
    m.step()
    assert m.group_id.startswith("eval-") and m.ep.deterministic
    run_episode(m, port, success=True)                     # v0 evaluates 1/1
    assert m.state == em.IDLE and not port.rollbacks
    assert m.store.groups("reach-v3") == []                # evaluations are never stored
    m.set_version(1)
    m.step()
    run_episode(m, port, success=False, version=1)         # v1 evaluates 0/1
    assert port.rollbacks == [0] and m.state == em.WAITING_FOR_UPDATE
    m.rollback_failed(0, "no learner")
    assert m.paused
    m.set_version(2)
    m.step()
    m.step()
    assert m.state == em.IDLE and not m.group_id.endswith("v0002")   # paused: nothing starts


def test_num_groups_and_pause_stop_new_groups(tmp_path):
    m, port = make(tmp_path, num_groups=1)
    m.set_version(0)
    m.set_paused(True)
    m.step()
    assert m.state == em.IDLE
    m.set_paused(False)
    m.step()
    run_episode(m, port, success=True)
    run_episode(m, port, success=True)
    m.step()
    assert m.state == em.IDLE and len(port.groups) == 1


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="group_size"):
        em.EpisodeManagerConfig(group_size=1)
    with pytest.raises(ValueError, match="reset_mode"):
        em.EpisodeManagerConfig(reset_mode="magic")


def test_the_machines_states_are_the_episode_state_messages_constants():
    from tinyvla_grpo_interfaces.msg import EpisodeState
    assert (em.IDLE, em.RESETTING, em.RUNNING, em.STORING, em.WAITING_FOR_UPDATE) == (
        EpisodeState.IDLE, EpisodeState.RESETTING, EpisodeState.RUNNING, EpisodeState.STORING,
        EpisodeState.WAITING_FOR_UPDATE)


def test_the_machine_says_what_it_waits_for(tmp_path):
    m, port = make(tmp_path, reset_mode="operator")
    assert "active adapter" in m.waiting_for()
    m.set_version(0)
    m.set_paused(True)
    assert "resume" in m.waiting_for()
    m.set_paused(False)
    m.step()
    assert "scene_ready" in m.waiting_for()
    m.scene_is_ready()
    m.step()
    assert m.waiting_for() == ""


def test_frames_that_differ_in_size_are_not_stored_and_the_episode_runs_again(tmp_path):
    m, port = make(tmp_path)
    m.set_version(0)
    m.step()
    m.reset_finished(True, "")
    m.add_chunk(m.ep.episode_id, frame(), "reach-v3", 0, "reach")
    big = frame() | {"images": np.zeros((1, 8, 8, 3), np.uint8)}   # a camera changed size
    m.add_chunk(m.ep.episode_id, big, "reach-v3", 0, "reach")
    m.sim_succeeded(True)
    m.step()
    assert m.state == em.RESETTING and not port.outcomes and m.store.groups("reach-v3") == []
    assert any("not stored" in t for _, t in port.logs)
