"""learner_node: GRPO on the task adapters from stored groups; publishes new adapter versions.

Subscribes  group_ready (GroupReady, reliable + transient-local history).
Serves      restore_adapter (SelectAdapter.srv): learning goes on from a stored version, which is
            written again as the next version (parent = the restored one; versions only go up)
            and published like any update. The regression guard and the panel's rollback use it.
Publishes   adapter_update (AdapterUpdate, latched, one per task): path + version + sha256 of the
            newest version, with the update's metrics; learner_metrics.csv in the adapter root.
At start it resumes from the newest complete version on disk that loads (writing v0000 = the SFT
start when there is none; refusing to start when there are versions and none loads, rather than
hand the robot the SFT start again) and rescans the rollout store for complete groups of that
version not yet learned from. Groups of an older version are dropped (stale); updates run in a
worker thread, on CUDA when available. A version is written atomically (meta.json last), so a
learner killed mid-write leaves the previous version as the newest complete one.
Widening the trainable set is a config change (`trainable_preset`, e.g. adapters ->
adapters+head+norms, with the policy node's): restarted, the learner goes on from the newest
version, written under the narrower preset, with the SFT values for what that version did not
train.
"""
from __future__ import annotations

import csv
import dataclasses
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError
from pathlib import Path

import torch
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from tinyvla_grpo_interfaces.msg import AdapterUpdate, GroupReady
from tinyvla_grpo_interfaces.srv import SelectAdapter

from ..core.adapters import (
    AdaptedPolicy,
    list_versions,
    read_adapter_version,
    save_adapter_version,
    version_dir,
)
from ..core.checkpoint import load_checkpoint
from ..core.config import GRPOConfig
from ..core.learner import GRPOLearner, UpdateCancelled
from ..core.rollout_store import RolloutStore
from ..core.sampler import DiffusionSampler
from .ros_common import (
    LATCHED_HISTORY,
    data_dir,
    declare,
    declare_model,
    declare_sampler,
    declare_settings,
    run,
)


class LearnerNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("learner_node", **kwargs)
        ckpt, self.tasks, self.root, adapter_cfg = declare_model(self)
        self.store = RolloutStore(Path(declare(self, "store_root", data_dir("rollouts"),
                                               "rollout store directory")),
                                  warn=self.get_logger().error)
        self.groups_per_update = declare(self, "groups_per_update", 1, "groups per update", 1,
                                         1000)
        cfg = GRPOConfig(**declare_settings(self, GRPOConfig))
        overrides = declare_sampler(self, ckpt)
        model, sampler_cfg, _ = load_checkpoint(ckpt)
        sampler_cfg = dataclasses.replace(sampler_cfg, **overrides)
        self.policy = AdaptedPolicy(model, adapter_cfg, self.tasks)
        self.sampler = DiffusionSampler(model.config, sampler_cfg)
        self.learner = GRPOLearner(self.policy, self.sampler, cfg)
        update_topic = declare(self, "adapter_update_topic", "adapter_update",
                               "AdapterUpdate topic")
        ready_topic = declare(self, "group_ready_topic", "group_ready", "GroupReady topic")
        restore_name = declare(self, "restore_service", "restore_adapter",
                               "SelectAdapter service: go on learning from a stored version")
        self.lock = threading.Lock()                  # one update or restore at a time
        self.restorer = ThreadPoolExecutor(1, thread_name_prefix="restore")
        self.pub = self.create_publisher(AdapterUpdate, update_topic, LATCHED_HISTORY)
        self.versions: dict[str, int] = {}
        self.learned: set[str] = set()
        self.pending: queue.Queue[tuple[str, str]] = queue.Queue()
        self.metrics_path = self.root / "learner_metrics.csv"
        for task in self.tasks:
            self.resume(task)
        self.create_subscription(GroupReady, ready_topic, self.on_group, LATCHED_HISTORY)
        self.create_service(SelectAdapter, restore_name, self.on_restore,
                            callback_group=ReentrantCallbackGroup())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.work, name="grpo", daemon=True)
        self.thread.start()
        self.get_logger().info(f"learner ready on {self.learner.device}: preset "
                               f"{adapter_cfg.preset}, "
                               f"versions {self.versions}")

    def resume(self, task: str) -> None:
        versions = list_versions(self.root, task)
        self.policy.activate(task)
        loaded, errors = None, []
        for v in reversed(versions):                    # newest version that reads back intact
            try:
                state, meta = read_adapter_version(version_dir(self.root, task, v), self.root)
                self.policy.load_adapter_state(state, task, preset=meta.get("preset"))
                loaded = v
                break
            except ValueError as e:
                errors.append(f"v{v}: {e}")
                self.get_logger().error(f"skipping {task} v{v}: {e}")
        if loaded is None and versions:
            # Starting over from the SFT start would hand the robot a policy without what was
            # learned; say why instead (e.g. a preset narrower than the stored versions').
            raise RuntimeError(f"no stored version of {task} under {self.root} loads; keeping "
                               f"them all and not starting. Newest first: {errors[:3]}")
        if loaded is None:
            loaded = 0
            save_adapter_version(self.policy, self.root, loaded, parent=None)
        self.versions[task] = loaded
        if self.learner.cfg.correction_weight > 0:     # corrections of earlier versions, runs
            n = self.learner.remember(self.store.recent_corrections(
                task, self.learner.cfg.correction_window))
            self.get_logger().info(f"{task}: {n} stored corrected chunks in the correction "
                                   "window")
        # groups already learned from (column 3 of learner_metrics.csv; a torn line is skipped)
        self.learned = {cols[2] for cols in (ln.split(",") for ln in self._metric_lines())
                        if len(cols) > 2}
        for gid, meta, n in self.store.group_summaries(task):
            if meta["adapter_version"] == loaded and n >= self.learner.cfg.group_size \
                    and gid not in self.learned:
                self.pending.put((task, gid))
        self.publish(task, parent=None, metrics={})

    def _metric_lines(self, all_lines: bool = False) -> list[str]:
        if not self.metrics_path.is_file():
            return []
        try:
            return self.metrics_path.read_text(errors="replace").splitlines()[
                0 if all_lines else 1:]
        except OSError as e:
            self.get_logger().error(f"{self.metrics_path}: not readable ({e}); learning from "
                                    "every stored group of the current version again")
            return []

    def _last_header(self) -> list[str]:
        heads = [ln for ln in self._metric_lines(all_lines=True)
                 if ln.startswith("task,version,group_id")]
        return heads[-1].split(",") if heads else []

    def on_group(self, msg: GroupReady) -> None:
        if msg.task_id not in self.tasks or msg.group_id in self.learned:
            return
        if msg.adapter_version != self.versions[msg.task_id]:
            self.get_logger().info(f"dropping stale group {msg.group_id} (v{msg.adapter_version}"
                                   f", learner at v{self.versions[msg.task_id]})")
            return
        self.pending.put((msg.task_id, msg.group_id))

    def work(self) -> None:
        batch: dict[str, list[str]] = {}
        while not self.stop.is_set():
            try:
                task, gid = self.pending.get(timeout=0.2)
            except queue.Empty:
                continue
            if gid in self.learned or gid in batch.get(task, []):
                continue
            batch.setdefault(task, []).append(gid)
            if len(batch[task]) >= self.groups_per_update:
                try:
                    with self.lock:
                        self.update(task, batch.pop(task))
                except Exception as e:  # noqa: BLE001 - keep the last good version, keep running
                    self.get_logger().error(f"update failed, keeping v{self.versions[task]}: "
                                            f"{e!r}")

    def update(self, task: str, group_ids: list[str]) -> None:
        groups = [self.store.read_group(task, g) for g in group_ids]
        groups = [g for g in groups if g and g[0].adapter_version == self.versions[task]]
        if not groups:
            return
        t0 = time.perf_counter()
        self.policy.activate(task)
        self.learner.use_optimizer(task)          # the task's own Adam moments and warm-up
        try:
            stats = self.learner.update(groups, should_stop=self.stop.is_set)
        except UpdateCancelled as e:
            self.get_logger().info(f"{task}: {e} at shutdown; no version written, "
                                   f"v{self.versions[task]} stays the newest")
            return
        if stats.optimizer_steps == 0:
            self.learned.update(group_ids)
            self.get_logger().info(f"{task}: no update from {group_ids} ({stats.groups_skipped} "
                                   f"of {stats.groups} groups without reward variance); staying "
                                   f"at v{self.versions[task]}")
            return
        parent = self.versions[task]
        version = max(list_versions(self.root, task) + [parent]) + 1   # only ever up
        metrics = stats.as_dict() | {"seconds": time.perf_counter() - t0}
        save_adapter_version(self.policy, self.root, version, parent, metrics)
        self.versions[task] = version
        self.learned.update(group_ids)
        header = ["task", "version", "group_id"] + list(metrics)
        with open(self.metrics_path, "a", newline="") as f:
            w = csv.writer(f)
            if header != self._last_header():    # a new file, or other metric columns
                w.writerow(header)
            for g in group_ids:
                w.writerow([task, version, g] + [f"{v:.6g}" for v in metrics.values()])
        self.get_logger().info(
            f"{task} v{version}: {stats.groups - stats.groups_skipped}/{stats.groups} groups "
            f"with signal, loss {stats.loss:.4f}, approx_kl {stats.approx_kl:.4f}, "
            f"clip {stats.clip_fraction:.2f}, {metrics['seconds']:.1f} s")
        self.publish(task, parent, metrics)

    def restore(self, task: str, source: int) -> tuple[bool, str]:
        """Go on from stored version `source`: write it again as the next version, publish."""
        if task not in self.tasks:
            return False, f"unknown task {task!r}; this learner serves {self.tasks}"
        with self.lock:
            try:       # a bad file or a wider preset's version: refused, nothing written
                state, meta = read_adapter_version(version_dir(self.root, task, source),
                                                   self.root)
                self.policy.activate(task)
                self.policy.load_adapter_state(state, task, preset=meta.get("preset"))
            except ValueError as e:
                return False, f"cannot restore {task} v{source}: {e}"
            version = max(list_versions(self.root, task) + [self.versions[task]]) + 1
            metrics = {"restored_from": float(source)}
            save_adapter_version(self.policy, self.root, version, source, metrics)
            self.versions[task] = version
            self.learner.use_optimizer(task)
            self.learner.rebuild_optimizer()      # moments of the abandoned versions: gone
        text = f"{task}: restored v{source} as v{version}; learning goes on from it"
        self.get_logger().warning(text)
        self.publish(task, source, metrics)
        return True, text

    def on_restore(self, req: SelectAdapter.Request, resp: SelectAdapter.Response):
        # Tensor loading and writing run on their own thread, never on the executor's.
        fut = self.restorer.submit(self.restore, req.adapter_name, int(req.version))
        try:
            resp.accepted, resp.message = fut.result(timeout=120)
        except TimeoutError:
            resp.accepted, resp.message = False, "restore did not finish within 120 s"
        resp.active_version = self.versions.get(req.adapter_name, 0)
        return resp

    def publish(self, task: str, parent: int | None, metrics: dict[str, float]) -> None:
        v = self.versions[task]
        d = version_dir(self.root, task, v)
        _, meta = read_adapter_version(d, self.root)
        msg = AdapterUpdate(adapter_name=task, version=v, parent_version=parent or 0,
                            path=str(d.resolve()), sha256=meta["sha256"],
                            metric_names=list(metrics), metric_values=[float(x) for x in
                                                                        metrics.values()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub.publish(msg)

    def close(self) -> None:
        self.stop.set()                  # an update in progress stops at its next minibatch
        self.thread.join(timeout=30)
        self.restorer.shutdown(wait=True, cancel_futures=True)


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(LearnerNode, threads=2)


if __name__ == "__main__":
    main()
