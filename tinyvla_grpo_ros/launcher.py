"""Start the nodes of a params file as separate processes, as `ros2 launch` would (runnable here).

    python -m tinyvla_grpo_ros.launcher config/sim_loop.yaml [--set node.param=value ...]
                                        [--only sim_node policy_node] [--ns /arm1]
                                        [--robots /arm1 /arm2]

Each top-level section of the YAML (sim_node, policy_node, episode_manager_node, learner_node) is
one process `python -m tinyvla_grpo_ros.nodes.<section> --ros-args --params-file <yaml> -p ...`.
Ctrl-C stops them all cleanly; if one exits, the others are stopped and its exit code returned.
With --robots, sim/policy/episode manager start once per namespace and one learner serves them
all over the absolute topics /group_ready and /adapter_update (parallel rollouts, one learner).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

NODES = ("sim_node", "policy_node", "episode_manager_node", "learner_node")
ROBOT_NODES = ("sim_node", "policy_node", "episode_manager_node")
SHARED_TOPICS = {"policy_node": {"adapter_update_topic": "/adapter_update"},
                 "episode_manager_node": {"group_ready_topic": "/group_ready",
                                          "restore_service": "/restore_adapter"},
                 "learner_node": {"adapter_update_topic": "/adapter_update",
                                  "group_ready_topic": "/group_ready"}}


def node_sections(params_file: Path) -> dict[str, dict]:
    """{node name: its parameters} of a ROS 2 params file. Keys may be plain (`policy_node`,
    matching that node in the root namespace only) or wildcards (`/**/policy_node`, matching it
    in any namespace, as the shipped files are written)."""
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    out = {}
    for key, body in data.items():
        name = key.removeprefix("/**/").strip("/")
        if isinstance(body, dict) and "ros__parameters" in body:
            out[name] = body["ros__parameters"]
    return out


def node_command(section: str, params_file: Path, overrides: dict[str, str], ns: str = ""
                 ) -> list[str]:
    if section not in NODES:
        raise ValueError(f"unknown node section {section!r}; known: {NODES}")
    cmd = [sys.executable, "-m", f"tinyvla_grpo_ros.nodes.{section}", "--ros-args",
           "--params-file", str(params_file)]
    for k, v in overrides.items():
        cmd += ["-p", f"{k}:={v}"]
    if ns:
        cmd += ["-r", f"__ns:={ns}"]
    return cmd


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set takes node.param=value, got {item!r}")
        out.setdefault(node, {})[param] = value
    return out


class Launch:
    """The processes of one params file; `stop()` sends SIGINT, then SIGKILL after a grace."""

    def __init__(self, params_file: Path, overrides: dict[str, dict[str, str]] | None = None,
                 only: list[str] | None = None, ns: str = "", log_dir: Path | None = None,
                 robots: list[str] | None = None) -> None:
        sections = node_sections(params_file)
        self.names = [n for n in sections if n in NODES and (not only or n in only)]
        unknown = set(overrides or {}) - set(self.names)
        if unknown:
            raise ValueError(f"--set names nodes not started: {sorted(unknown)}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.procs: dict[str, subprocess.Popen] = {}
        runs = [(name, ns, name) for name in self.names]
        if robots:
            runs = [(n, r, f"{r.strip('/')}.{n}") for r in robots for n in self.names
                    if n in ROBOT_NODES] + [(n, ns, n) for n in self.names
                                            if n not in ROBOT_NODES]
        for name, node_ns, label in runs:
            params = dict(SHARED_TOPICS.get(name, {})) if robots else {}
            params.update((overrides or {}).get(name, {}))
            out = open(Path(log_dir) / f"{label}.log", "w") if log_dir else None
            self.procs[label] = subprocess.Popen(
                node_command(name, Path(params_file), params, node_ns),
                env=env, stdout=out, stderr=subprocess.STDOUT if out else None)

    def poll(self) -> tuple[str, int] | None:
        """(name, exit code) of the first process that exited, if any."""
        for name, p in self.procs.items():
            if p.poll() is not None:
                return name, p.returncode
        return None

    def stop(self, grace: float = 15.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("params_file", type=Path)
    ap.add_argument("--set", action="append", default=[], help="node.param=value")
    ap.add_argument("--only", nargs="*", help="start only these node sections")
    ap.add_argument("--ns", default="", help="ROS namespace for every node")
    ap.add_argument("--robots", nargs="*", help="namespaces of several robots, one learner")
    args = ap.parse_args(argv)
    launch = Launch(args.params_file, parse_overrides(args.set), args.only, args.ns,
                    robots=args.robots)
    print(f"started {', '.join(launch.procs)}; Ctrl-C stops them", flush=True)
    try:
        while (ended := launch.poll()) is None:
            time.sleep(0.2)
        print(f"{ended[0]} exited with {ended[1]}; stopping the others", flush=True)
        return ended[1] or 1
    except KeyboardInterrupt:
        return 0
    finally:
        launch.stop()


if __name__ == "__main__":
    sys.exit(main())
