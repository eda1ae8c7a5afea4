"""Safety of policy_node over DDS: clamps and rate limit, watchdog, e-stop, disable, episode end;
and each chunk re-scores to its own log-probs from what it carries, with a fast camera.

A real policy_node process (tiny random model, whose raw actions span the whole [-1, 1] range)
runs in chunk mode; the test is its camera, its joint states and its episode manager, and
listens to what would reach the arm: the ActionChunk stream (a hold is an empty chunk).
"""
import time

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray
from ros_harness import Client, SensorFeed, launch_policy_node
from std_msgs.msg import Bool
from std_srvs.srv import SetBool
from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState

from tinyvla_grpo_ros.core.checkpoint import load_checkpoint
from tinyvla_grpo_ros.core.model import Observation
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE, image_to_numpy

LIMIT, MAX_DELTA, N_EXEC = 0.05, 0.02, 4
# How long a step waits for commands to resume. Only a failure waits this long: on a 2-core CI
# machine the node and this test have stalled for seconds at a time (in one CI run the node's
# inputs stayed stale for the whole 10 s this step waited after the e-stop cleared).
RESUME_S = 30.0


def test_clamps_rate_limit_rescoring_watchdog_estop_disable_and_episode_end_over_dds(tmp_path):
    launch, ckpt = launch_policy_node(
        tmp_path, N_EXEC, action_low=str([-LIMIT] * 4), action_high=str([LIMIT] * 4),
        max_delta_per_step=str(MAX_DELTA), watchdog_s="0.5", stale_after_s="1.0")
    client = Client("safety")
    n = client.node
    chunks, holds, diags, stream_order = [], [], [], []

    def on_chunk(m: ActionChunk) -> None:
        (chunks if m.horizon else holds).append(m)
        stream_order.append(m)                   # chunks and holds in the order they came

    n.create_subscription(ActionChunk, "action_chunk", on_chunk, RELIABLE)
    n.create_subscription(DiagnosticArray, "/diagnostics",
                          lambda m: diags.extend(s.message for s in m.status), 10)
    feed = SensorFeed(n)
    pub_ep = n.create_publisher(EpisodeState, "episode_state", LATCHED)
    pub_estop = n.create_publisher(Bool, "estop", RELIABLE)
    log = lambda: (tmp_path / "policy_node.log").read_text()[-3000:]  # noqa: E731

    def stream(seconds: float, until=None, period: float = 0.05) -> bool:
        """Camera + joints at 1 / period Hz for `seconds` (or until `until()`)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert launch.poll() is None, log()
            feed.publish()
            if client.spin_until(until or (lambda: False), period) and until is not None:
                return True
        return False

    def run_episode(eid: str) -> None:
        pub_ep.publish(EpisodeState(state=EpisodeState.RUNNING, episode_id=eid,
                                    task_id="reach-v3"))

    try:
        run_episode("ep-1")
        assert stream(60, lambda: len(chunks) >= 6), f"no chunks\n{log()}"
        # 1. clamps and the rate limit, within and across chunks, from rest (zeros); a hold
        # (the watchdog, when a decision stalls past watchdog_s) stops the arm: rest again
        prev = np.zeros(4)
        raw_span = 0.0
        for c in stream_order[:stream_order.index(chunks[5]) + 1]:
            if not c.horizon:
                prev = np.zeros(4)
                continue
            a = np.asarray(c.actions).reshape(c.horizon, c.action_dim)
            assert np.all(np.abs(a) <= LIMIT + 1e-6), a
            steps = np.diff(np.vstack([prev, a]), axis=0)
            assert np.all(np.abs(steps) <= MAX_DELTA + 1e-6), steps
            prev = a[c.executed_steps - 1]
            raw_span = max(raw_span, np.abs(a).max())
        assert raw_span > 0.01, "actions all ~0: the limits were not exercised"

        # 1b. a new (random) frame every 5 ms, so frames arrive while the policy samples: each
        # chunk still carries the observation it was sampled from (its log-probs re-score to
        # themselves: ratio 1 for the learner), not the newest frame
        k = len(chunks)
        assert stream(30, lambda: len(chunks) >= k + 6, period=0.005), log()
        model, scfg, _ = load_checkpoint(ckpt)
        sampler = DiffusionSampler(model.config, scfg)
        for c in chunks[k:k + 6]:
            obs = Observation(
                torch.from_numpy(np.stack([image_to_numpy(i) for i in c.images]))[None],
                torch.tensor([c.joint_positions], dtype=torch.float32), [c.instruction])
            chain = torch.tensor(c.chain, dtype=torch.float32).reshape(
                1, len(c.log_probs) + 1, c.horizon, c.action_dim)
            with torch.no_grad():
                lp = sampler.chain_log_prob(model, obs, chain, c.executed_steps)[0]
            assert torch.allclose(lp, torch.tensor(c.log_probs), atol=1e-3, rtol=1e-4), \
                (lp, c.log_probs)

        # 2. the watchdog: the camera stops, a hold follows once; chunks resume with it
        holds.clear()
        client.spin_until(lambda: False, 1.5)
        assert len(holds) == 1, f"{len(holds)} holds while the camera was silent\n{log()}"
        # /diagnostics goes out once a second: wait for the one after the hold
        assert client.spin_until(lambda: any("watchdog" in d for d in diags), 3), diags[-3:]
        assert len(holds) == 1, "the watchdog fired twice in one lapse"
        k = len(chunks)
        assert stream(RESUME_S, lambda: len(chunks) > k + 2), f"no chunks after the lapse\n{log()}"

        # 3. e-stop: hold at once, nothing while latched, commands after it is cleared
        holds.clear()
        pub_estop.publish(Bool(data=True))
        assert stream(5, lambda: len(holds) >= 1), "no hold on e-stop"
        k = len(chunks)
        stream(1.0)
        assert len(chunks) == k, "a command went out during the e-stop"
        pub_estop.publish(Bool(data=False))
        assert stream(RESUME_S, lambda: len(chunks) > k), \
            f"no command after the e-stop cleared\n{log()}"

        # 4. disable / enable
        holds.clear()
        assert client.call(SetBool, "enable", SetBool.Request(data=False)).success
        assert stream(5, lambda: len(holds) >= 1), "no hold on disable"
        k = len(chunks)
        stream(1.0)
        assert len(chunks) == k, "a command went out while disabled"
        assert client.call(SetBool, "enable", SetBool.Request(data=True)).success
        assert stream(RESUME_S, lambda: len(chunks) > k), f"no command after enable\n{log()}"

        # 5. the episode ends: hold, and no command until the next one runs
        holds.clear()
        pub_ep.publish(EpisodeState(state=EpisodeState.IDLE, episode_id="ep-1",
                                    task_id="reach-v3"))
        assert stream(5, lambda: len(holds) >= 1), "no hold at episode end"
        k = len(chunks)
        stream(1.5)
        assert len(chunks) == k, "a command went out between episodes"
        # The node's log orders its holds: a watchdog hold may precede the episode-end one (the
        # episode still ran at the node, on a loaded machine), but none may follow it.
        after_end = (tmp_path / "policy_node.log").read_text().rsplit(
            "hold sent (episode ended)", 1)
        assert len(after_end) == 2, f"no episode-end hold in the node's log\n{log()}"
        assert "hold sent (watchdog" not in after_end[1], \
            f"a watchdog hold after the episode ended\n{log()}"
        run_episode("ep-2")
        assert stream(RESUME_S, lambda: len(chunks) > k), f"no command in ep-2\n{log()}"
        first = np.asarray(chunks[k].actions).reshape(-1, 4)[0]
        assert np.all(np.abs(first) <= MAX_DELTA + 1e-6), "a new episode starts from rest"
    finally:
        client.close()
        launch.stop()
