"""The GRPO learner: `update(groups) -> UpdateStats` over stored rollouts of one adapter version.

1. advantages per group (zero-variance groups skipped: dynamic sampling), one per episode, given to
   every chunk of the episode;
2. `epochs` passes over the chunks in shuffled minibatches; each minibatch is split into
   micro-batches whose gradients accumulate to exactly the minibatch gradient;
3. a NaN/inf loss or gradient skips that optimizer step (and says so); gradients are clipped;
4. the learning rate warms up linearly over an optimizer's first `warmup_steps` steps, and base
   tensors (head, norms, blocks: everything that is not LoRA) step at `base_lr_scale` x lr, the
   noise prior (x_K's mean, sampler.py) at `noise_prior_lr_scale` x lr. Adam's
   first step moves every weight by lr in the direction sign(grad); for a weight matrix that is
   sign(delta) sign(x), so a layer's output moves by lr x ||x||_1, i.e. by lr x fan-in: measured,
   one step at lr 1e-4 on the tiny head took the approximate KL to 0.29, at lr 3e-4 it took
   reach-v3 from 0.65 to 0.10. A LoRA B matrix has fan-in r, hence the separate scale;
5. with `target_kl` > 0, the update stops early when a minibatch's approximate KL to the
   sampling policy (measured before its step) exceeds 1.5 x target_kl: a step size that would
   collapse the policy is cut short instead (measured: lr 3e-4 without it took reach-v3 from
   0.65 to 0.10 in one update).
6. `ratio` chooses what the clipped ratio compares: "chain" (default) the per-step Gaussian
   log-densities of the stored K' denoising steps (DDPO/DPPO); "elbo" the denoising-loss
   surrogate of the executed chunk x_0 (sampler.elbo_log_likelihood, FPO), one term per chunk,
   with `elbo_samples` draws of (t, noise) fixed per chunk for the whole update. Its old value is
   computed at the start of the update (the weights that sampled the batch: the learner never
   mixes versions), so the ratio is exactly 1 before the first step. The guard of point 5 is
   measured on the chain log-densities either way: they say how far the *sampling* policy
   moved, the surrogate does not (measured on push-v3 with the guard on the surrogate: the
   guard never fired and the cell success fell from 0.37-0.40 to 0.07-0.10 in 128-256 episodes).
Runs on CUDA when available (config `device="auto"`), CPU otherwise.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .adapters import AdaptedPolicy
from .grpo import GRPOLossConfig, group_advantages, grpo_loss, step_weights
from .model import Observation
from .rollout_store import EpisodeRecord
from .sampler import DiffusionSampler


@dataclass
class GRPOConfig:
    """Learner settings; defaults follow the measured toy (DESIGN.md)."""

    group_size: int = 8                 # G rollouts per initial state
    lr: float = 3e-4                    # Adam on the trainable set
    epochs: int = 4                     # passes over a batch of groups (PPO-style reuse)
    minibatch_size: int = 64            # chunks per optimizer step
    micro_batch_size: int = 64          # chunks per forward/backward (memory knob only)
    clip_low: float = 0.2
    clip_high: float = 0.28
    denoise_discount: float = 1.0
    kl_coef: float = 0.0
    target_kl: float = 0.0              # stop an update early above 1.5 x this (0 = off)
    warmup_steps: int = 0               # linear lr warm-up over an optimizer's first steps
    base_lr_scale: float = 1.0          # lr of non-LoRA tensors = base_lr_scale x lr
    noise_prior_lr_scale: float = 0.3   # lr of the noise prior (x_K's mean) = this x lr
    max_grad_norm: float = 1.0
    adv_eps: float = 1e-6
    leave_one_out: bool = False
    loss_aggregation: str = "chunk"     # "chunk": mean over chunks; "episode": each episode
    #                                     weighs the same, whatever its length (grpo.py)
    drop_stale: bool = True             # refuse groups of another adapter version
    ratio: str = "chain"                # "chain": K' step log-densities; "elbo": denoising
    #                                     surrogate of the executed chunk (point 6 above)
    elbo_samples: int = 4               # (t, noise) draws per chunk for ratio "elbo"
    negative_advantage_scale: float = 1.0   # x negative advantages (0: learn from the better
    #                                         episodes of a group only, as in filtered BC)
    device: str = "auto"                # "auto" = cuda if available, else cpu

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"GRPO needs group_size >= 2, got {self.group_size}")
        for name in ("epochs", "minibatch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.target_kl < 0:
            raise ValueError(f"target_kl must be >= 0, got {self.target_kl}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("base_lr_scale", "noise_prior_lr_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.loss_aggregation not in ("chunk", "episode"):
            raise ValueError(f"loss_aggregation must be 'chunk' or 'episode', got "
                             f"{self.loss_aggregation!r}")
        if self.ratio not in ("chain", "elbo"):
            raise ValueError(f"ratio must be 'chain' or 'elbo', got {self.ratio!r}")
        if not 0 <= self.negative_advantage_scale <= 1:
            raise ValueError(f"negative_advantage_scale must lie in [0, 1], got "
                             f"{self.negative_advantage_scale}")
        if self.elbo_samples < 1:
            raise ValueError(f"elbo_samples must be >= 1, got {self.elbo_samples}")
        self.loss_cfg()  # validates the clip / discount / kl fields

    def loss_cfg(self) -> GRPOLossConfig:
        return GRPOLossConfig(self.clip_low, self.clip_high, self.denoise_discount, self.kl_coef)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


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
    prior_mean_rms: float = 0.0         # noise prior: RMS of x_K's mean over the chunks, in
    #                                     units of x_K's std (0: no prior, or not moved yet)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass
class Batch:
    """Chunks of all episodes: obs, chains (N, K'+1, Ta, Da), logp_old (N, K') (one more of each
    with a noise prior: x_K and its log-density come first; or logp_old (N, 1) for
    ratio "elbo"), adv (N,), weights (N,) = u_n of grpo.py; for ratio "elbo" the fixed draws
    elbo_t (N, M), elbo_noise (N, M, Ta, Da) and the chains' stored log-probs (N, K'), on which
    the step-size guard (target_kl) is measured."""

    obs: Observation
    chains: torch.Tensor
    logp_old: torch.Tensor
    executed: torch.Tensor
    advantages: torch.Tensor
    weights: torch.Tensor
    elbo_t: torch.Tensor | None = None
    elbo_noise: torch.Tensor | None = None
    chain_logp_old: torch.Tensor | None = None     # ratio "elbo": the stored (N, K') log-probs

    def to(self, device: torch.device) -> Batch:
        opt = lambda x: None if x is None else x.to(device)  # noqa: E731
        return Batch(self.obs.to(device), self.chains.to(device), self.logp_old.to(device),
                     self.executed.to(device), self.advantages.to(device),
                     self.weights.to(device), opt(self.elbo_t), opt(self.elbo_noise),
                     opt(self.chain_logp_old))

    def __len__(self) -> int:
        return self.chains.shape[0]

    def select(self, idx: torch.Tensor) -> Batch:
        return Batch(self.obs.select(idx), self.chains[idx], self.logp_old[idx],
                     self.executed[idx], self.advantages[idx], self.weights[idx],
                     None if self.elbo_t is None else self.elbo_t[idx],
                     None if self.elbo_noise is None else self.elbo_noise[idx],
                     None if self.chain_logp_old is None else self.chain_logp_old[idx])


def build_batch(groups: list[list[EpisodeRecord]], cfg: GRPOConfig, stats: UpdateStats
                ) -> Batch | None:
    parts, rewards = [], []
    for group in groups:
        r = torch.tensor([e.reward for e in group])
        rewards += r.tolist()
        adv = group_advantages(r, cfg.adv_eps, cfg.leave_one_out) if len(group) >= 2 else None
        if adv is not None and cfg.negative_advantage_scale != 1:
            adv = torch.where(adv < 0, adv * cfg.negative_advantage_scale, adv)
        stats.groups += 1
        if adv is None:
            stats.groups_skipped += 1
            continue
        for ep, a in zip(group, adv):
            if ep.num_chunks == 0:      # counts in its group's baseline, has nothing to score
                continue
            t = ep.tensors
            C = t["chains"].shape[0]
            u = 1.0 / C if cfg.loss_aggregation == "episode" else 1.0
            parts.append((t, [ep.instruction] * C, a.expand(C), torch.full((C,), u)))
    stats.skipped_fraction = stats.groups_skipped / max(1, stats.groups)
    stats.mean_reward = sum(rewards) / max(1, len(rewards))
    if not parts:
        return None
    cat = lambda k: torch.cat([p[0][k] for p in parts])  # noqa: E731
    return Batch(Observation(cat("images"), cat("states").float(),
                             [s for p in parts for s in p[1]]),
                 cat("chains").float(), cat("log_probs").float(), cat("executed").long(),
                 torch.cat([p[2] for p in parts]).float(), torch.cat([p[3] for p in parts]))


class GRPOLearner:
    def __init__(self, policy: AdaptedPolicy, sampler: DiffusionSampler, cfg: GRPOConfig) -> None:
        self.policy, self.sampler, self.cfg = policy, sampler, cfg
        self.device = cfg.resolved_device()
        self.policy.model.to(self.device)
        self.loss_cfg = cfg.loss_cfg()
        if cfg.ratio == "elbo" and policy.model.noise_prior is not None:
            raise ValueError("ratio 'elbo' scores the executed x_0 only, so it would never train "
                             "the noise prior: use ratio 'chain' with noise_prior")
        if self.loss_cfg.kl_coef > 0:
            policy.reference()                       # raises early for presets without one
        self.optimizers: dict[str, tuple[list[int], torch.optim.Adam]] = {}
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
            prior = {id(p) for n, p in named if n.startswith("noise_prior.")}
            groups = [{"params": [p for p in params if id(p) in lora], "lr_scale": 1.0},
                      {"params": [p for p in params if id(p) in prior],
                       "lr_scale": self.cfg.noise_prior_lr_scale},
                      {"params": [p for p in params if id(p) not in lora | prior],
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

    def _logp(self, b: Batch, cond: torch.Tensor | None = None, chain: bool = False
              ) -> torch.Tensor:
        """Log-prob terms (n, K'), or (n, 1) for ratio "elbo" unless `chain`, for chunks that
        may have different executed prefixes."""
        model = self.policy.model
        cond = model.encode(b.obs) if cond is None else cond
        elbo = b.elbo_t is not None and not chain
        out = torch.empty((len(b), 1 if elbo else b.chains.shape[1] - 1), device=cond.device)
        for n_exec in b.executed.unique().tolist():
            rows = (b.executed == n_exec).nonzero().squeeze(1)
            if elbo:
                out[rows, 0] = self.sampler.elbo_log_likelihood(
                    model, b.obs, b.chains[rows, -1], b.elbo_t[rows], b.elbo_noise[rows],
                    n_exec, cond=cond[rows])
            else:
                out[rows] = self.sampler.chain_log_prob(model, b.obs, b.chains[rows], n_exec,
                                                        cond=cond[rows])
        return out

    @torch.no_grad()
    def with_elbo_draws(self, b: Batch, generator: torch.Generator | None) -> Batch:
        """Ratio "elbo": fix each chunk's (t, noise) draws and score them with the weights that
        sampled the batch (the old policy), in micro-batches on the learner's device."""
        N, M = len(b), self.cfg.elbo_samples
        T = self.sampler.alphas_cumprod.numel()
        t = torch.randint(0, T, (N, M), generator=generator)
        noise = torch.randn((N, M, *b.chains.shape[2:]), generator=generator)
        b = Batch(b.obs, b.chains, torch.zeros(N, 1), b.executed, b.advantages, b.weights, t,
                  noise, b.logp_old)
        old = []
        for start in range(0, N, self.cfg.micro_batch_size):
            part = b.select(torch.arange(start, min(start + self.cfg.micro_batch_size, N)))
            old.append(self._logp(part.to(self.device)).cpu())
        b.logp_old = torch.cat(old)
        return b

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
                             logp_ref, b.weights)
        loss.backward()
        if self.policy.model.noise_prior is not None:
            with torch.no_grad():
                mu = self.policy.model.init_noise_mean(cond) / self.sampler.cfg.init_noise_scale
                acc["prior_sq_sum"] = acc.get("prior_sq_sum", 0.0) + mu.pow(2).mean().item() \
                    * len(b)
                acc["prior_n"] = acc.get("prior_n", 0.0) + len(b)
        kl_sum, kl_terms = st["approx_kl_sum"].item(), st["terms"].item()
        if b.chain_logp_old is not None:         # ratio "elbo": guard on the sampling policy
            with torch.no_grad():
                d = self._logp(b, cond.detach(), chain=True) - b.chain_logp_old
                kl_sum, kl_terms = ((d.exp() - 1) - d).sum().item(), float(d.numel())
        acc["kl_sum"] = acc.get("kl_sum", 0.0) + kl_sum
        acc["kl_terms"] = acc.get("kl_terms", 0.0) + kl_terms
        acc["loss"] = acc.get("loss", 0.0) + loss.item()
        for k in ("clip_count", "ref_kl_sum", "terms"):
            acc[k] = acc.get(k, 0.0) + st[k].item()
        acc["ratio_min"] = min(acc.get("ratio_min", math.inf), st["ratio_min"].item())
        acc["ratio_max"] = max(acc.get("ratio_max", -math.inf), st["ratio_max"].item())

    def minibatch_gradient(self, b: Batch, acc: dict[str, float]) -> None:
        """Zero grads, then accumulate the whole minibatch in micro-batches."""
        self.optimizer.zero_grad(set_to_none=True)
        Kp = b.logp_old.shape[1]                        # K' terms, or 1 for ratio "elbo"
        w_steps = step_weights(Kp, self.loss_cfg.denoise_discount).sum()
        normalizer = float(b.weights.sum() * w_steps)
        for start in range(0, len(b), self.cfg.micro_batch_size):
            idx = torch.arange(start, min(start + self.cfg.micro_batch_size, len(b)))
            self.accumulate(b.select(idx), normalizer, acc)

    def update(self, groups: list[list[EpisodeRecord]], generator: torch.Generator | None = None
               ) -> UpdateStats:
        stats = UpdateStats()
        versions = {(e.adapter_name, e.adapter_version) for g in groups for e in g}
        if len(versions) > 1 and self.cfg.drop_stale:
            raise ValueError(f"groups come from several adapter versions {sorted(versions)}; "
                             "the learner never mixes versions in one update")
        batch = build_batch(groups, self.cfg, stats)
        if batch is None:
            return stats                               # every group had zero variance
        stats.chunks = len(batch)
        model = self.policy.model
        if self.cfg.ratio == "elbo":
            model.eval()
            batch = self.with_elbo_draws(batch, generator)
        model.train()
        params = self.policy.trainable_parameters()
        losses, grad_norms, totals = [], [], {}
        first, stopped_kl = True, 0.0
        for _ in range(self.cfg.epochs):
            if stats.early_stopped:
                break
            perm = torch.randperm(len(batch), generator=generator)
            for start in range(0, len(batch), self.cfg.minibatch_size):
                acc: dict[str, float] = {}
                self.minibatch_gradient(batch.select(perm[start:start + self.cfg.minibatch_size]),
                                        acc)
                if first:
                    stats.first_ratio_max_dev = max(abs(acc["ratio_max"] - 1),
                                                    abs(acc["ratio_min"] - 1))
                    first = False
                kl = acc["kl_sum"] / max(1.0, acc["kl_terms"])
                # Judged after a step only: it limits the step size, not a stale batch.
                if self.cfg.target_kl > 0 and stats.optimizer_steps > 0 and \
                        kl > 1.5 * self.cfg.target_kl:
                    stats.early_stopped, stopped_kl = 1, kl
                    self.optimizer.zero_grad(set_to_none=True)
                    break
                gn = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
                if not (math.isfinite(acc["loss"]) and torch.isfinite(gn)):
                    stats.nonfinite_steps_skipped += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                self.set_lr()
                self.optimizer.step()
                self.steps_taken[self.optimizer_key] += 1
                stats.optimizer_steps += 1
                losses.append(acc["loss"])
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
            terms = max(1.0, totals["terms"])
            stats.loss = sum(losses) / len(losses)
            stats.grad_norm = sum(grad_norms) / len(grad_norms)
            stats.clip_fraction = totals["clip_count"] / terms
            stats.approx_kl = totals["kl_sum"] / max(1.0, totals["kl_terms"])
            stats.ref_kl = totals["ref_kl_sum"] / terms
            stats.ratio_min, stats.ratio_max = totals["ratio_min"], totals["ratio_max"]
            if "prior_n" in totals:             # over every chunk of every step taken
                stats.prior_mean_rms = math.sqrt(totals["prior_sq_sum"] / totals["prior_n"])
        return stats
