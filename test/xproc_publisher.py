"""Publisher half of test_interfaces_cross_process: publishes every sample, answers a service.

Runs as its own process; exits by itself after `--seconds`.
"""
import argparse
import sys
import time
from pathlib import Path

import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

sys.path.insert(0, str(Path(__file__).parent))
from interface_samples import SAMPLES  # noqa: E402
from tinyvla_grpo_interfaces.srv import MarkOutcome  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    rclpy.init()
    node = rclpy.create_node("xproc_publisher")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pubs = []
    for name, (msg_type, build) in SAMPLES.items():
        pub = node.create_publisher(msg_type, "/xproc/" + name, qos)
        pub.publish(build(args.seed))
        pubs.append(pub)

    def mark(req, resp):
        resp.accepted = req.outcome == MarkOutcome.Request.SUCCESS
        resp.message = "marked %s" % req.episode_id
        return resp

    node.create_service(MarkOutcome, "/xproc/mark_outcome", mark)
    deadline = time.monotonic() + args.seconds
    while rclpy.ok() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
