"""Start node processes and talk to them from the test over real DDS (localhost, own domain)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor

ROOT = Path(__file__).resolve().parents[1]


def start_node(module: str, params: dict | None = None, ns: str = "", log: Path | None = None,
               params_file: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", f"tinyvla_grpo_ros.nodes.{module}", "--ros-args"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    for k, v in (params or {}).items():
        args += ["-p", f"{k}:={v}"]
    if ns:
        args += ["-r", f"__ns:={ns}"]
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(args, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out,
                            stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(2)                        # SIGINT, as Ctrl-C
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """A test-side node with its own context; spin_until(pred) drives callbacks."""

    def __init__(self, name: str = "test_client") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, pred, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return bool(pred())

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available")
        fut = client.call_async(request)
        self.executor.spin_until_future_complete(fut, timeout_sec=timeout)
        if not fut.done():
            raise TimeoutError(f"service {name} did not answer")
        return fut.result()

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
