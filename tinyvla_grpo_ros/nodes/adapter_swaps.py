"""policy_node's hot-swaps: adapter versions read and verified on a loader thread, applied in
place between two chunks when the node allows it (by default only between groups).

`AdapterSwaps.offer(...)` (an AdapterUpdate arrived) and `select(...)` (the select_adapter
service) stage a verified version; `apply_if_allowed()` applies the staged one when
`allowed()` says so (the node calls it again when an episode ends). No decision ever waits for
disk I/O or verification: the runtime lock is held only for the in-place copy.
`AdapterTopics` is policy_node's adapter_update / select_adapter / active_adapter endpoints.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rclpy.callback_groups import ReentrantCallbackGroup
from tinyvla_grpo_interfaces.msg import AdapterUpdate
from tinyvla_grpo_interfaces.srv import SelectAdapter

from ..core.policy_runtime import PolicyRuntime, PreparedSwap
from . import ros_common as rc


class AdapterSwaps:
    def __init__(self, runtime: PolicyRuntime, allowed: Callable[[], bool],
                 applied: Callable[[PreparedSwap, float], None], logger) -> None:
        self.runtime, self.allowed, self.applied, self.log = runtime, allowed, applied, logger
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="adapter_loader")
        self.lock = threading.Lock()
        self.pending: PreparedSwap | None = None
        self.rejected = 0
        self.problem = ""             # the last rejected version (cleared by a swap)

    def offer(self, adapter: str, version: int, path: str, sha256: str) -> None:
        """A new version was announced: verify it on the loader thread, then stage it."""
        if version != self.runtime.versions.get(adapter):
            self.loader.submit(self._prepare, adapter, version, path or None, sha256 or None)

    def _prepare(self, adapter: str, version: int, path: str | None, sha: str | None) -> None:
        try:
            prepared = self.runtime.prepare_swap(adapter, version, path, sha)
        except (ValueError, OSError) as e:
            self.rejected += 1
            self.log.error(f"adapter {adapter} v{version} rejected, keeping "
                           f"v{self.runtime.versions[adapter]}: {e}")
            self.problem = f"adapter {adapter} v{version} rejected: {e}"
            return
        self.pending = prepared
        self.apply_if_allowed()

    def select(self, adapter: str, version: int, timeout_s: float = 60.0) -> tuple[bool, str]:
        """The select_adapter service: verify and stage `version` (applied now when allowed)."""
        def load_and_apply():
            self.pending = self.runtime.prepare_swap(adapter, version)
            self.apply_if_allowed()
        try:
            self.loader.submit(load_and_apply).result(timeout=timeout_s)
        except (ValueError, OSError, TimeoutError) as e:
            return False, str(e)
        active = self.runtime.versions[adapter] == version
        return True, "active" if active else "verified; applies when the current group ends"

    def apply_later(self) -> None:
        """Try the staged version again, off the caller's thread (tensor copies)."""
        if self.pending is not None:
            self.loader.submit(self.apply_if_allowed)

    def apply_if_allowed(self) -> None:
        if not self.allowed():
            return
        with self.lock:               # called from the loader and the inference threads
            p, self.pending = self.pending, None
        if p is None:
            return
        held_ms = self.runtime.apply_swap(p)  # takes the runtime lock: lands between chunks
        self.problem = ""
        self.log.info(f"adapter {p.adapter} now v{p.version} (verified in {p.load_ms:.1f} ms, "
                      f"swapped in {held_ms:.2f} ms)")
        self.applied(p, held_ms)

    def close(self) -> None:
        self.loader.shutdown(wait=True, cancel_futures=True)


class AdapterTopics:
    """AdapterUpdate on `update_topic` offers versions; select_adapter stages one (the service
    waits for the loader: reentrant); active_adapter (latched) says which version acts."""

    def __init__(self, node, swaps: AdapterSwaps, tasks: list[str], update_topic: str) -> None:
        self.node, self.swaps, self.tasks = node, swaps, tasks
        node.create_subscription(AdapterUpdate, update_topic, self.on_update,
                                 rc.LATCHED_HISTORY)
        node.create_service(SelectAdapter, "select_adapter", self.on_select,
                            callback_group=ReentrantCallbackGroup())
        self.pub_active = node.create_publisher(AdapterUpdate, "active_adapter", rc.LATCHED)

    def on_update(self, msg: AdapterUpdate) -> None:
        if msg.adapter_name in self.tasks:
            self.swaps.offer(msg.adapter_name, msg.version, msg.path, msg.sha256)

    def on_select(self, req: SelectAdapter.Request, resp: SelectAdapter.Response):
        resp.accepted, resp.message = self.swaps.select(req.adapter_name, req.version)
        resp.active_version = self.swaps.runtime.versions.get(req.adapter_name, 0)
        return resp

    def publish_active(self) -> None:
        adapter, version = self.swaps.runtime.active
        msg = AdapterUpdate(adapter_name=adapter, version=version)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub_active.publish(msg)
