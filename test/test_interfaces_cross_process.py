"""Every custom interface crosses a process boundary over real DDS with all fields intact."""
import os
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from interface_samples import SAMPLES
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from tinyvla_grpo_interfaces.srv import MarkOutcome

HERE = Path(__file__).parent


def test_every_message_type_arrives_intact_from_another_process():
    seed = 1234
    proc = subprocess.Popen([sys.executable, str(HERE / "xproc_publisher.py"), "--seed", str(seed),
                             "--seconds", "40"], env=os.environ.copy())
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("xproc_subscriber", context=context)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        received = {}
        for name, (msg_type, _) in SAMPLES.items():
            node.create_subscription(msg_type, "/xproc/" + name,
                                     lambda m, n=name: received.setdefault(n, m), qos)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 30
        while len(received) < len(SAMPLES) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert set(received) == set(SAMPLES), "missing: %s" % (set(SAMPLES) - set(received))
        for name, (_, build) in SAMPLES.items():
            expected = build(seed)
            for field in expected.get_fields_and_field_types():
                assert getattr(received[name], field) == getattr(expected, field), (name, field)
            assert received[name] == expected
        chunk = received["action_chunk"]
        assert len(chunk.images[0].data) == 224 * 224 * 3 and len(chunk.chain) == 4 * 16 * 7

        client = node.create_client(MarkOutcome, "/xproc/mark_outcome")
        assert client.wait_for_service(timeout_sec=10)
        future = client.call_async(MarkOutcome.Request(episode_id="ep-9", outcome=0))
        executor.spin_until_future_complete(future, timeout_sec=10)
        assert future.result().accepted and future.result().message == "marked ep-9"
    finally:
        rclpy.shutdown(context=context)
        proc.terminate()
        proc.wait(timeout=10)
