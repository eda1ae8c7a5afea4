"""Shared by the nodes: the rclpy main() pattern, parameter descriptors, image conversion."""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
# Latched with history: late joiners get every recent GroupReady / AdapterUpdate, not just one.
LATCHED_HISTORY = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)


def declare(node: Node, name: str, default, description: str, lo=None, hi=None):
    """Declare a parameter with a descriptor (and a range for numbers); return its value."""
    d = ParameterDescriptor(description=description)
    if lo is not None and hi is not None and not isinstance(default, bool):
        if isinstance(default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo),
                                                         to_value=float(hi), step=0.0)]
    return node.declare_parameter(name, default, d).value


def data_dir(kind: str) -> str:
    """Default home of adapters / rollouts: $ROS_HOME/tinyvla_grpo/<kind> (~/.ros when unset),
    user-writable and independent of the directory a launch was started from."""
    home = os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
    return os.path.join(home, "tinyvla_grpo", kind)


def declare_required(node: Node, name: str, description: str) -> list[str]:
    """A string-array parameter without a default: refuse to start when it is not set."""
    from rclpy.parameter import Parameter
    value = node.declare_parameter(name, Parameter.Type.STRING_ARRAY,
                                   ParameterDescriptor(description=description)).value
    if not value:
        raise ValueError(f"parameter {name!r} is required: {description}")
    return list(value)


def declare_settings(node: Node, cls, defaults=None, only: tuple[str, ...] | None = None
                     ) -> dict:
    """Declare one parameter per recipe setting of `cls` (core/recipe.py): its name, help,
    range and type come from the dataclass field; its default from `defaults` (an instance,
    e.g. the checkpoint's SamplerConfig) or the field's adopted value. Returns {name: value}."""
    from ..core.recipe import settings
    out = {}
    for s in settings(cls, only):
        default = getattr(defaults, s.name) if defaults is not None else s.default
        if s.kind is float:
            default = float(default)
        if isinstance(default, tuple):
            default = list(default)
        value = declare(node, s.name, default, s.describe(), s.lo, s.hi)
        out[s.name] = tuple(value) if isinstance(s.default, tuple) else value
    return out


def declare_sampler(node: Node, checkpoint) -> dict:
    """The sampler's recipe settings as parameters whose defaults are the checkpoint's values;
    returns them as overrides of the checkpoint's SamplerConfig (the same in every node)."""
    from ..core.checkpoint import read_sampler_config
    from ..core.config import SamplerConfig
    return declare_settings(node, SamplerConfig, read_sampler_config(checkpoint),
                            SamplerConfig.RECIPE)


def declare_model(node: Node):
    """Parameters policy_node and learner_node must agree on (same names, same defaults):
    -> (checkpoint Path, tasks = adapter names, adapter_root Path, AdapterConfig)."""
    from pathlib import Path

    from ..core.adapters import PRESETS, AdapterConfig
    ckpt = declare(node, "checkpoint", "", "SFT checkpoint directory")
    if not ckpt:
        raise ValueError("parameter 'checkpoint' is required")
    tasks = list(declare(node, "tasks", ["reach-v3"], "tasks = adapter names"))
    root = declare(node, "adapter_root", data_dir("adapters"), "directory of adapter versions")
    preset = declare(node, "trainable_preset", "adapters", "one of " + ", ".join(PRESETS))
    rank = declare(node, "lora_rank", 8, "LoRA rank", 1, 256)
    return Path(ckpt), tasks, Path(root), AdapterConfig(preset=preset, rank=rank)


def diagnostics(name: str, problems: list[str], values: dict, stamp):
    """A DiagnosticArray of one status: WARN naming the problems, OK otherwise."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    st = DiagnosticStatus(name=f"tinyvla_grpo/{name}", hardware_id=name,
                          level=DiagnosticStatus.WARN if problems else DiagnosticStatus.OK,
                          message="; ".join(problems) or "ok")
    st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    arr = DiagnosticArray(status=[st])
    arr.header.stamp = stamp
    return arr


def numpy_to_image(img: np.ndarray, stamp, frame_id: str = "camera") -> Image:
    """(H, W, 3) uint8 -> sensor_msgs/Image rgb8."""
    h, w, _ = img.shape
    msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                data=np.ascontiguousarray(img, dtype=np.uint8).tobytes())
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def log_at(logger, level: str, text: str) -> None:
    """Log at a severity named at run time ("error", "warning", else info): one call site per
    severity, as rclpy refuses a call site whose severity changes."""
    if level == "error":
        logger.error(text)
    elif level == "warning":
        logger.warning(text)
    else:
        logger.info(text)


def call(client, request, who: str, timeout_s: float = 30.0, wait_s: float = 2.0):
    """A service call from a thread that is not the executor's (a panel request, a helper
    thread): the response, or None when `who` does not serve it or does not answer."""
    if not client.wait_for_service(timeout_sec=wait_s):
        return None
    done = threading.Event()
    fut = client.call_async(request)
    fut.add_done_callback(lambda _: done.set())
    return fut.result() if done.wait(timeout_s) else None


class BadImage(ValueError):
    pass


def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> (H, W, 3) uint8 RGB; BadImage names what is wrong."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise BadImage(f"unsupported encoding {msg.encoding!r} (expected rgb8 or bgr8)")
    if msg.height == 0 or msg.width == 0:
        raise BadImage("empty image (height or width is 0)")
    if msg.step < msg.width * 3 or len(msg.data) != msg.step * msg.height:
        raise BadImage(f"data size {len(msg.data)} does not match {msg.height} rows of step "
                       f"{msg.step} for width {msg.width}")
    arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    arr = arr[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
    return arr[..., ::-1].copy() if msg.encoding == "bgr8" else arr.copy()


class GcPauses:
    """Python's garbage-collector pauses in this process (gc.callbacks): how many collections
    of the oldest generation ran and the longest pause, for /diagnostics."""

    def __init__(self) -> None:
        import gc
        import time
        self._clock, self._t0, self.count, self.max_ms = time.perf_counter, 0.0, 0, 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = self._clock()
        elif info.get("generation") == 2:
            self.count += 1
            self.max_ms = max(self.max_ms, (self._clock() - self._t0) * 1e3)

    def values(self) -> dict:
        return {"gc_full_collections": self.count, "gc_pause_ms_max": round(self.max_ms, 2)}


def run(node_factory: Callable[[], Node], threads: int = 4, events: bool = False) -> None:
    """The rclpy main(): init, spin, and one clean shutdown however it is asked for.

    SIGINT (once, or twice as a terminal's Ctrl-C under `ros2 launch` delivers it) and SIGTERM
    only set a flag: the executor stops spinning, the node's `close()` finishes its threads while
    the context is still valid (so nothing publishes into a closed context), then the node is
    destroyed and rclpy shut down; the process exits 0. A factory that raises (a bad parameter)
    exits 1 with its message. threads=1 spins in the main thread (a GL context lives there).
    events=True spins rclpy's EventsExecutor (one thread, an event queue in C++): a node whose
    heavy work runs on its own threads keeps the GIL free for them. MultiThreadedExecutor's spin
    re-submits entities that are still being handled and scans the growing list of their futures
    on every wake-up (docs/RESULTS.md, "Decisions on time")."""
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node = executor = None
    try:
        node = node_factory()
        import gc
        gc.freeze()           # what start-up built (models, modules) is never scanned again
        if events:
            from rclpy.experimental import EventsExecutor
            executor = EventsExecutor()
        else:
            executor = (SingleThreadedExecutor() if threads == 1
                        else MultiThreadedExecutor(num_threads=threads))
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    except Exception as e:  # noqa: BLE001 - say why the node cannot run, exit non-zero
        if node is None:
            print(f"[{getattr(node_factory, '__name__', 'node')}] cannot start: {e}",
                  file=sys.stderr, flush=True)
            _shutdown()
            sys.exit(1)
        raise
    finally:
        if executor is not None:
            _drain(executor)
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        _shutdown()


def _drain(executor) -> None:
    """Let the callbacks in flight finish, then shut the executor down. rclpy 9's
    MultiThreadedExecutor.shutdown destroys its guard condition before it waits for its worker
    threads, so a callback still running then fails ("cannot use Destroyable"); its thread
    pool is drained first here."""
    pool = getattr(executor, "_executor", None)
    if pool is not None:
        pool.shutdown(wait=True)
    executor.shutdown(timeout_sec=10.0)


def _shutdown() -> None:
    try:
        if rclpy.ok():
            rclpy.shutdown()
    except Exception:  # noqa: BLE001 - already shut down by another path
        pass
    # rclpy's shutdown restores the handlers it found before init (the default, which would
    # kill the process with -2 when `ros2 launch` forwards a late second SIGINT): exiting now.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
