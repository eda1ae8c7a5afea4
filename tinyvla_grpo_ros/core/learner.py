"""The GRPO learner: `update(groups) -> UpdateStats` over stored rollouts of one adapter version.

1. advantages per group (zero-variance groups skipped: dynamic sampling), one per episode, given to
   every chunk of the episode;
2. `epochs` passes over the chunks in shuffled minibatches; each minibatch is split into
   micro-batches whose gradients accumulate to exactly the minibatch gradient;
3. a NaN/inf loss or gradient skips that optimizer step (and says so); gradients are clipped;
4. the learning rate warms up linearly over an optimizer's first `warmup_steps` steps, and base
   tensors (head, norms, blocks: everything that is not LoRA) step at `base_lr_scale` x lr.
   Adam's first step moves every weight by lr in the direction sign(grad); for a weight matrix
   that is sign(delta) sign(x), so a layer's output moves by lr x ||x||_1, i.e. by lr x fan-in.
   A LoRA B matrix has fan-in r, hence the separate scale;
5. with `target_kl` > 0, the update stops early when a minibatch's approximate KL to the
   sampling policy (measured before its step, from the second step on) exceeds 1.5 x target_kl:
   a step size that would collapse the policy is cut short;
6. with `correction_weight` w > 0, every optimizer step also takes w x the denoising loss
   (core/sft.py) on as many of the operator's corrected chunks (takeovers: actions that are not
   samples of the policy and never enter a ratio), drawn from the task's window of recent
   corrections (core/correction_window.py; the corrections of every update enter it, whatever
   the episode's outcome), on the same trainable set. When no group has signal, that loss is all
   there is: the update takes as many steps as the GRPO term would over all of its groups'
   chunks.
The ratio compares the per-step Gaussian log-densities of the stored K' denoising steps
(DDPO/DPPO); the learner never mixes adapter versions in one update, so the ratio is exactly 1
before the first step. The settings are `GRPOConfig` (core/config.py). Runs on CUDA when
available (`device="auto"`), CPU otherwise.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .adapters import AdaptedPolicy
from .config import GRPOConfig
from .correction_window import CorrectionBatch, CorrectionWindow
from .grpo import group_advantages, grpo_loss, step_weights
from .model import Observation
from .rollout_store import EpisodeRecord
from .sampler import DiffusionSampler, build_scheduler
from .sft import denoising_loss, noise_draws

__all__ = ["Batch", "GRPOConfig", "GRPOLearner", "UpdateCancelled", "UpdateStats",
           "build_batch"]


class UpdateCancelled(RuntimeError):
    """`update` stopped between two minibatches because `should_stop()` said so (shutdown)."""


@dataclass
class UpdateStats:
    loss: float = 0.0
    clip_fraction: float = 0.0
    approx_kl: float = 0.0
    ref_kl: float = 0.0
    grad_norm: float = 0.0
    ratio_min: float = 1.0
    ratio_max: float = 1.0
    first_ratio_max_dev: float = 0.0    # |ratio - 1| on the first minibatch (0 before any step)
    groups: int = 0
    groups_skipped: int = 0             # zero reward variance: no signal
    skipped_fraction: float = 0.0
    chunks: int = 0
    optimizer_steps: int = 0
    nonfinite_steps_skipped: int = 0
    early_stopped: int = 0              # 1 when target_kl cut the update short
    mean_reward: float = 0.0
    correction_loss: float = 0.0        # mean weighted denoising loss on corrections per step
    correction_chunks: int = 0          # chunks in the task's correction window

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass
class Batch:
    """The chunks of all episodes with signal: obs, chains (N, K'+1, Ta, Da), logp_old (N, K'),
    executed (N,) prefix lengths, advantages (N,)."""

    obs: Observation
    chains: torch.Tensor
    logp_old: torch.Tensor
    executed: torch.Tensor
    advantages: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(self.obs.to(device), self.chains.to(device), self.logp_old.to(device),
                     self.executed.to(device), self.advantages.to(device))

    def __len__(self) -> int:
        return self.chains.shape[0]

    def select(self, idx: torch.Tensor) -> Batch:
        return Batch(self.obs.select(idx), self.chains[idx], self.logp_old[idx],
                     self.executed[idx], self.advantages[idx])


def build_batch(groups: list[list[EpisodeRecord]], cfg: GRPOConfig, stats: UpdateStats
                ) -> Batch | None:
    parts, rewards = [], []
    for group in groups:
        r = torch.tensor([e.reward for e in group])
        rewards += r.tolist()
        adv = group_advantages(r, cfg.adv_eps) if len(group) >= 2 else None
        stats.groups += 1
        if adv is None:
            stats.groups_skipped += 1
            continue
        for ep, a in zip(group, adv):
            if ep.num_chunks == 0:      # counts in its group's baseline, has nothing to score
                continue
            t = ep.tensors
            C = t["chains"].shape[0]
            parts.append((t, [ep.instruction] * C, a.expand(C)))
    stats.skipped_fraction = stats.groups_skipped / max(1, stats.groups)
    stats.mean_reward = sum(rewards) / max(1, len(rewards))
    if not parts:
        return None
    cat = lambda k: torch.cat([p[0][k] for p in parts])  # noqa: E731
    return Batch(Observation(cat("images"), cat("states").float(),
                             [s for p in parts for s in p[1]]),
                 cat("chains").float(), cat("log_probs").float(), cat("executed").long(),
                 torch.cat([p[2] for p in parts]).float())


class GRPOLearner:
    def __init__(self, policy: AdaptedPolicy, sampler: DiffusionSampler, cfg: GRPOConfig) -> None:
        self.policy, self.sampler, self.cfg = policy, sampler, cfg
        self.device = cfg.resolved_device()
        self.policy.model.to(self.device)
        self.loss_cfg = cfg.loss_cfg()
        if self.loss_cfg.kl_coef > 0:
            policy.reference()                       # raises early for presets without one
        self.optimizers: dict[str, tuple[list[int], torch.optim.Adam]] = {}
        self.correction_windows: dict[str, CorrectionWindow] = {}   # per adapter (task)
        self.train_sched = build_scheduler(policy.model.config, "ddpm")
        self.steps_taken: dict[str, int] = {}        # per optimizer, for the warm-up
        self.use_optimizer("default")

    def use_optimizer(self, key: str) -> None:
        """Step with `key`'s Adam (one per task: its moments and warm-up are the task's own); a
        new one when the key is new or its trainable set changed."""
        params = self.policy.trainable_parameters()
        ids = [id(p) for p in params]
        if key not in self.optimizers or self.optimizers[key][0] != ids:
            named = [(n, p) for n, p in self.policy.model.named_parameters() if p.requires_grad]
            lora = {id(p) for n, p in named if ".lora_" in n}
            groups = [{"params": [p for p in params if id(p) in lora], "lr_scale": 1.0},
                      {"params": [p for p in params if id(p) not in lora],
                       "lr_scale": self.cfg.base_lr_scale}]
            groups = [g for g in groups if g["params"]]
            self.optimizers[key] = (ids, torch.optim.Adam(groups, lr=self.cfg.lr))
            self.steps_taken[key] = 0
        self.optimizer_key = key
        self.optimizer = self.optimizers[key][1]

    def rebuild_optimizer(self) -> None:
        """A fresh Adam (and warm-up) for the current key: after a restore or a widened set."""
        self.optimizers.pop(self.optimizer_key, None)
        self.use_optimizer(self.optimizer_key)

    def set_lr(self) -> None:
        """lr of the next step: warm-up x group scale."""
        n = self.steps_taken[self.optimizer_key] + 1
        warm = min(1.0, n / self.cfg.warmup_steps) if self.cfg.warmup_steps else 1.0
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.lr * g["lr_scale"] * warm

    def _logp(self, b: Batch, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step log-probs (n, K') of chunks that may have different executed prefixes."""
        model = self.policy.model
        cond = model.encode(b.obs) if cond is None else cond
        out = torch.empty((len(b), b.chains.shape[1] - 1), device=cond.device)
        for n_exec in b.executed.unique().tolist():
            rows = (b.executed == n_exec).nonzero().squeeze(1)
            out[rows] = self.sampler.chain_log_prob(model, b.obs, b.chains[rows], n_exec,
                                                    cond=cond[rows])
        return out

    def accumulate(self, b: Batch, normalizer: float, acc: dict[str, float]) -> None:
        """Forward + backward of one micro-batch; gradients add up in .grad."""
        b = b.to(self.device)
        cond = self.policy.model.encode(b.obs)
        logp_new = self._logp(b, cond)
        logp_ref = None
        if self.loss_cfg.kl_coef > 0:
            with torch.no_grad(), self.policy.reference():
                logp_ref = self._logp(b)
        loss, st = grpo_loss(logp_new, b.logp_old, b.advantages, self.loss_cfg, normalizer,
                             logp_ref)
        loss.backward()
        acc["kl_sum"] = acc.get("kl_sum", 0.0) + st["approx_kl_sum"].item()
        acc["kl_terms"] = acc.get("kl_terms", 0.0) + st["terms"].item()
        acc["loss"] = acc.get("loss", 0.0) + loss.item()
        for k in ("clip_count", "ref_kl_sum", "terms"):
            acc[k] = acc.get(k, 0.0) + st[k].item()
        acc["ratio_min"] = min(acc.get("ratio_min", math.inf), st["ratio_min"].item())
        acc["ratio_max"] = max(acc.get("ratio_max", -math.inf), st["ratio_max"].item())

    def corrections(self, adapter: str) -> CorrectionWindow:
        """The task's window of recent operator-corrected chunks (filled by `update` and
        `remember`)."""
        if adapter not in self.correction_windows:
            self.correction_windows[adapter] = CorrectionWindow(self.cfg.correction_window)
        return self.correction_windows[adapter]

    def remember(self, episodes: list[EpisodeRecord]) -> int:
        """Adds stored corrected episodes (e.g. of earlier versions) to their tasks' windows."""
        return sum(self.corrections(e.adapter_name).add([e]) for e in episodes)

    def correction_gradient(self, s: CorrectionBatch, acc: dict[str, float],
                            generator: torch.Generator | None = None) -> None:
        """Adds correction_weight x the denoising loss of the chunks `s` to .grad,
        micro-batched (the sum over micro-batches is the loss of the whole of `s`)."""
        weight, off = self.cfg.correction_weight, self.policy.model.config.action_offset
        s = s.shifted(off)              # the operator's actions from the current step's index
        normalizer = float(s.executed.sum() * s.a0.shape[2])
        noise, t = noise_draws(self.policy.model, s.a0.shape, generator)
        for start in range(0, len(s), self.cfg.micro_batch_size):
            rows = torch.arange(start, min(start + self.cfg.micro_batch_size, len(s)))
            m = s.select(rows).to(self.device)
            loss = weight * denoising_loss(
                self.policy.model, self.train_sched, m.obs, m.a0, None, m.executed,
                normalizer=normalizer, draws=(noise[rows].to(self.device),
                                              t[rows].to(self.device)), offset=off)
            loss.backward()
            acc["correction_loss"] = acc.get("correction_loss", 0.0) + loss.item()

    def minibatch_gradient(self, b: Batch, acc: dict[str, float]) -> None:
        """Zero grads, then accumulate the whole minibatch in micro-batches."""
        self.optimizer.zero_grad(set_to_none=True)
        w_steps = step_weights(b.logp_old.shape[1], self.loss_cfg.denoise_discount).sum()
        normalizer = float(len(b) * w_steps)
        for start in range(0, len(b), self.cfg.micro_batch_size):
            idx = torch.arange(start, min(start + self.cfg.micro_batch_size, len(b)))
            self.accumulate(b.select(idx), normalizer, acc)

    def update(self, groups: list[list[EpisodeRecord]], generator: torch.Generator | None = None,
               should_stop=None) -> UpdateStats:
        """One GRPO update over `groups`. should_stop() is asked before every minibatch; when it
        says yes, UpdateCancelled is raised (the weights are then half-updated: the caller
        writes no version from them)."""
        stats = UpdateStats()
        versions = {(e.adapter_name, e.adapter_version) for g in groups for e in g}
        if len(versions) > 1:
            raise ValueError(f"groups come from several adapter versions {sorted(versions)}; "
                             "the learner never mixes versions in one update")
        adapter = next(iter(versions))[0] if versions else self.policy.active
        corr = self.corrections(adapter) if self.cfg.correction_weight > 0 else None
        if corr is not None:
            corr.add([e for g in groups for e in g])
            stats.correction_chunks = len(corr)
        batch = build_batch(groups, self.cfg, stats)
        if batch is not None:
            n_chunks = stats.chunks = len(batch)
        else:      # no group with signal: the correction loss alone, if any
            n_chunks = sum(e.num_chunks for g in groups for e in g)
            if not corr:
                return stats                           # nothing to learn from
        model = self.policy.model
        model.train()
        params = self.policy.trainable_parameters()
        losses, grad_norms, totals = [], [], {}
        first, stopped_kl = True, 0.0
        for _ in range(self.cfg.epochs):
            if stats.early_stopped:
                break
            perm = torch.randperm(n_chunks, generator=generator) if batch is not None else None
            for start in range(0, n_chunks, self.cfg.minibatch_size):
                if should_stop is not None and should_stop():
                    model.eval()
                    raise UpdateCancelled(f"update stopped after {stats.optimizer_steps} step(s)")
                acc: dict[str, float] = {}
                n = min(self.cfg.minibatch_size, n_chunks - start)
                if batch is not None:
                    self.minibatch_gradient(batch.select(perm[start:start + n]), acc)
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                if corr:
                    self.correction_gradient(corr.sample(n, generator), acc, generator)
                if first and batch is not None:
                    stats.first_ratio_max_dev = max(abs(acc["ratio_max"] - 1),
                                                    abs(acc["ratio_min"] - 1))
                    first = False
                kl = acc.get("kl_sum", 0.0) / max(1.0, acc.get("kl_terms", 0.0))
                # Judged after a step only: it limits the step size, not a stale batch.
                if self.cfg.target_kl > 0 and stats.optimizer_steps > 0 and \
                        kl > 1.5 * self.cfg.target_kl:
                    stats.early_stopped, stopped_kl = 1, kl
                    self.optimizer.zero_grad(set_to_none=True)
                    break
                gn = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
                step_loss = acc.get("loss", 0.0) + acc.get("correction_loss", 0.0)
                if not (math.isfinite(step_loss) and torch.isfinite(gn)):
                    stats.nonfinite_steps_skipped += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                self.set_lr()
                self.optimizer.step()
                self.steps_taken[self.optimizer_key] += 1
                stats.optimizer_steps += 1
                losses.append(step_loss)
                grad_norms.append(gn.item())
                for k, v in acc.items():
                    if k in ("ratio_min", "ratio_max"):
                        totals[k] = (min if k == "ratio_min" else max)(totals.get(k, v), v)
                    else:
                        totals[k] = totals.get(k, 0.0) + v
        model.eval()
        if stats.early_stopped:
            print(f"[learner] update stopped early after {stats.optimizer_steps} step(s): "
                  f"approx KL {stopped_kl:.3f} > 1.5 x target_kl {self.cfg.target_kl}")
        if stats.nonfinite_steps_skipped:
            print(f"[learner] skipped {stats.nonfinite_steps_skipped} optimizer step(s) with a "
                  "non-finite loss or gradient")
        if losses:
            terms = max(1.0, totals.get("terms", 0.0))
            stats.loss = sum(losses) / len(losses)
            stats.grad_norm = sum(grad_norms) / len(grad_norms)
            stats.correction_loss = totals.get("correction_loss", 0.0) / len(losses)
            if batch is not None:
                stats.clip_fraction = totals["clip_count"] / terms
                stats.approx_kl = totals["kl_sum"] / max(1.0, totals["kl_terms"])
                stats.ref_kl = totals["ref_kl_sum"] / terms
                stats.ratio_min, stats.ratio_max = totals["ratio_min"], totals["ratio_max"]
        return stats
