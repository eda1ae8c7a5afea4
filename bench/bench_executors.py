"""rclpy executors side by side: what spinning a policy_node-like set of callbacks costs.

    python bench/bench_executors.py [--quick]

One subscriber process per executor (MultiThreadedExecutor with 4 threads, the
SingleThreadedExecutor, rclpy's EventsExecutor), each for the same time, receives a 30 Hz
224x224 rgb8 camera from this harness and runs policy_node's timers (50, 10 and 1 Hz) with empty
callbacks. The figures are its own CPU time per second (user + system, from getrusage), the
camera and 50 Hz timer rates it achieved, and, for the multi-threaded one, how many handler
futures it held at most (its spin re-submits entities still being handled and scans that list
on every wake-up, holding the GIL):

    executor_cpu_ms_per_s_<multi|single|events>, executor_images_hz_<...>,
    executor_timer_hz_<...>, executor_futures_max_multi
"""
import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

KINDS = ("multi", "single", "events")


def child(kind: str, seconds: float) -> None:
    rclpy.init()
    node = rclpy.create_node("executor_bench_sub")
    n = {"images": 0, "timer": 0, "futures": 0}
    node.create_subscription(Image, "executor_bench_image",
                             lambda m: n.__setitem__("images", n["images"] + 1),
                             qos_profile_sensor_data)
    node.create_timer(0.02, lambda: n.__setitem__("timer", n["timer"] + 1))
    node.create_timer(0.1, lambda: None)
    node.create_timer(1.0, lambda: None)
    if kind == "multi":
        from rclpy.executors import MultiThreadedExecutor
        ex = MultiThreadedExecutor(num_threads=4)
    elif kind == "single":
        from rclpy.executors import SingleThreadedExecutor
        ex = SingleThreadedExecutor()
    else:
        from rclpy.experimental import EventsExecutor
        ex = EventsExecutor()
    ex.add_node(node)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    while time.monotonic() - t0 < seconds:          # as ros_common.run spins
        ex.spin_once(timeout_sec=0.1)
        n["futures"] = max(n["futures"], len(getattr(ex, "_futures", [])))
    r1, el = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    print(f"executor_cpu_ms_per_s_{kind}={cpu / el * 1e3:.1f}")
    print(f"executor_images_hz_{kind}={n['images'] / el:.1f}")
    print(f"executor_timer_hz_{kind}={n['timer'] / el:.1f}")
    if kind == "multi":
        print(f"executor_futures_max_multi={n['futures']}")
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 s per executor instead of 30")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.seconds)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 50))
    seconds = 8.0 if args.quick else args.seconds
    rclpy.init()
    node = rclpy.create_node("executor_bench_camera")
    pub = node.create_publisher(Image, "executor_bench_image", qos_profile_sensor_data)
    frame = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    msg = Image(height=224, width=224, encoding="rgb8", step=224 * 3, data=frame.tobytes())
    try:
        for kind in KINDS:
            p = subprocess.Popen([sys.executable, __file__, "--child", kind, "--seconds",
                                  str(seconds)])
            nxt = time.monotonic()
            while p.poll() is None:
                if time.monotonic() >= nxt:
                    pub.publish(msg)
                    nxt += 1 / 30
                time.sleep(max(0.0, min(nxt - time.monotonic(), 0.01)))
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
