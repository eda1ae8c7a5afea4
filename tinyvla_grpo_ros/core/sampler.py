"""Stochastic diffusion sampling with per-step log-probs, and batched re-scoring of stored chains.

Notation (docs/DESIGN.md "The math"): K denoising steps with timesteps t_K > ... > t_1, K' the
last steps that are stochastic and fine-tuned, x_k (B, Ta, Da) the sample entering step k,
a_t = alphas_cumprod[t] (the diffusers tables), eps_theta the head's noise prediction, c the
observation condition.

Each step is Gaussian:  x_{k-1} ~ N(mu_theta(x_k, t_k, c), std_k^2)
  DDIM (Song et al. 2021, eq. 12):
      x0 = (x_k - sqrt(1 - a_t) eps) / sqrt(a_t)                       (clipped to [-1, 1])
      sigma_k = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
      mu = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma_k^2) eps
  DDPM (Ho et al. 2020, eqs. 6-7, "fixed_small" variance):
      mu = sqrt(a_prev) b / (1 - a_t) x0 + sqrt(a_t / a_prev) (1 - a_prev) / (1 - a_t) x_k,
      sigma_k^2 = (1 - a_prev) / (1 - a_t) b,      b = 1 - a_t / a_prev
  Sampling uses std_k = max(sigma_k, min_sampling_std) and noise z clipped to
  [-noise_clip, noise_clip]; scoring uses std_k = max(sigma_k, min_logprob_std). The final step
  (a_prev = 1, set_alpha_to_one) has sigma = 0 and is therefore floored, deliberately: it is the
  step that decides the action most.
  Deterministic (evaluation) sampling: every step returns mu with eta = 0.

The K - K' unscored steps map (observation, x_K) to x_{K'}, the input of the first scored step.
With `frozen_prefix` (the exact trust region) they run a frozen copy of the SFT policy, taken
when the sampler is built: training then moves only the K' scored steps, which the clipped ratio
and the KL guard see; without it the trained weights also move x_{K'}, unseen by both.

x_K ~ N(0, init_noise_scale^2 I). x_K is not scored (it does not depend on theta), so whatever its
draw decides about the outcome is noise to GRPO; init_noise_scale < 1 narrows it (1 = the
distribution the head was trained on). Evaluations fix x_K per (scene, decision) with
`paired_init_noise`, so that versions are compared on the same draws.

log pi(chunk) = sum over the K' steps of log N(x_{k-1}; mu, std_k^2), each summed over the executed
actions (Ta_exec x Da): the chunk's prefix, or with To > 1 observation steps the Ta_exec actions
from index To - 1 (ModelConfig.action_offset; the chunk starts at the oldest observation). Per-step
values are kept (B, K') because GRPO clips per denoising step.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from .config import ModelConfig, SamplerConfig
from .model import Observation, TinyVLAPolicy

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class Chunk:
    """One sampled batch of action chunks and what re-scoring needs."""

    actions: torch.Tensor         # (B, Ta - To + 1, Da) robot units, from the current step on
    chain: torch.Tensor           # (B, K'+1, Ta, Da) normalized; chain[:, -1] = x_0
    log_probs: torch.Tensor       # (B, K') per fine-tuned step, over the executed actions
    executed_steps: int           # Ta_exec


def paired_init_noise(key: int, init_ids: list[int], decision: int,
                      shape: tuple[int, ...]) -> torch.Tensor:
    """x_K ~ N(0, I) of shape (len(init_ids), *shape): the draw for each init state at one
    decision index of its episode, seeded by (key, init state id, decision).

    Evaluations that pass it as `sample(init_noise=...)` are paired: two adapter versions meet
    the same x_K in the same scene at the same decision, whatever else ran beside them or ended
    earlier, so their difference is not a difference of noise draws."""
    out = []
    for i in init_ids:
        seed = np.random.SeedSequence([key, int(i), decision]).generate_state(1, np.uint64)[0]
        out.append(torch.randn(shape, generator=torch.Generator().manual_seed(int(seed) >> 1)))
    return torch.stack(out)


def build_scheduler(model_cfg: ModelConfig, kind: str):
    """The diffusers scheduler whose tables the sampler uses (also used for SFT noising)."""
    common = dict(num_train_timesteps=model_cfg.num_train_timesteps,
                  beta_schedule=model_cfg.beta_schedule, clip_sample=model_cfg.clip_sample,
                  prediction_type="epsilon")
    if kind == "ddim":
        return DDIMScheduler(set_alpha_to_one=True, **common)
    return DDPMScheduler(variance_type="fixed_small", **common)


def frozen_copy(model: TinyVLAPolicy) -> TinyVLAPolicy:
    """A copy of `model` that no optimizer, adapter or hot-swap reaches: eval mode, no grads."""
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class DiffusionSampler:
    """DDIM (eta > 0) or DDPM sampling over diffusers tables; `sample` and `chain_log_prob`.

    sft_model: the SFT policy, before any adapter wraps it; with `cfg.frozen_prefix` the
    sampler keeps a frozen copy of it for the unscored steps (see the module docstring). A
    sampler that only re-scores stored chains (the learner) needs none."""

    def __init__(self, model_cfg: ModelConfig, cfg: SamplerConfig,
                 sft_model: TinyVLAPolicy | None = None) -> None:
        self.cfg, self.model_cfg = cfg, model_cfg
        self.prefix_model = frozen_copy(sft_model) if cfg.frozen_prefix and \
            sft_model is not None else None
        sched = build_scheduler(model_cfg, cfg.scheduler)
        sched.set_timesteps(cfg.num_inference_steps)
        K = cfg.num_inference_steps
        t = sched.timesteps.long()                                          # (K,) descending
        prev = torch.cat([t[1:], torch.tensor([-1])])                       # (K,) -1 = clean
        acp = sched.alphas_cumprod.double()
        a_t = acp[t]
        a_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], torch.ones_like(a_t))
        if cfg.scheduler == "ddim":
            var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev) * cfg.eta ** 2
        else:
            var = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=1e-20)
        self.timesteps, self.prev_timesteps = t, prev
        self.alphas_cumprod = acp.float()                                   # (T,) training table
        self.a_t, self.a_prev, self.sigma = a_t.float(), a_prev.float(), var.sqrt().float()
        self.first_stochastic = K - cfg.stochastic_steps                     # index of step K'
        self.offset = model_cfg.action_offset
        if self.offset + self.executed_steps() > model_cfg.horizon:
            raise ValueError(f"executed_steps {self.executed_steps()} from chunk index "
                             f"{self.offset} (n_obs_steps {model_cfg.n_obs_steps}) overrun the "
                             f"horizon {model_cfg.horizon}: at most "
                             f"{model_cfg.horizon - self.offset}")

    @property
    def stochastic_indices(self) -> torch.Tensor:
        """Indices (into the K-step schedule) of the K' fine-tuned steps."""
        return torch.arange(self.first_stochastic, self.cfg.num_inference_steps)

    def to(self, device: torch.device | str) -> DiffusionSampler:
        """Moves the frozen prefix model (the tables move per call)."""
        if self.prefix_model is not None:
            self.prefix_model.to(device)
        return self

    def executed_steps(self) -> int:
        return self.cfg.executed_steps or self.model_cfg.horizon - self.model_cfg.action_offset

    def step_mean_std(self, x: torch.Tensor, eps: torch.Tensor, idx: torch.Tensor,
                      stochastic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unfloored std of x_{k-1} given x_k; x, eps (N, Ta, Da), idx (N,) steps."""
        a_t = self.a_t.to(x.device)[idx].view(-1, 1, 1)
        a_prev = self.a_prev.to(x.device)[idx].view(-1, 1, 1)
        sigma = self.sigma.to(x.device)[idx].view(-1, 1, 1)
        if not stochastic:
            sigma = torch.zeros_like(sigma)
        # 1. predicted clean sample
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if self.model_cfg.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        # 2. mean of x_{k-1}
        if self.cfg.scheduler == "ddim":
            mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        else:
            beta = 1 - a_t / a_prev
            mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 \
                + ((a_t / a_prev).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        return mean, sigma

    def gaussian_log_prob(self, x_prev: torch.Tensor, mean: torch.Tensor,
                          sigma: torch.Tensor, n_exec: int) -> torch.Tensor:
        """log N(x_prev; mean, max(sigma, floor)^2) summed over the n_exec executed actions
        (from chunk index `offset`) -> (N,)."""
        std = sigma.clamp(min=self.cfg.min_logprob_std)
        lp = -0.5 * ((x_prev - mean) / std) ** 2 - std.log() - LOG_SQRT_2PI     # (N, Ta, Da)
        return lp[:, self.offset:self.offset + n_exec].sum(dim=(1, 2))

    @torch.no_grad()
    def sample(self, model: TinyVLAPolicy, obs: Observation, generator: torch.Generator | None
               = None, deterministic: bool = False, record: bool = True,
               init_noise: torch.Tensor | None = None) -> Chunk:
        """Sample a chunk per observation; record the chain and log-probs of the last K' steps.

        record=False draws the same actions but keeps neither (the baseline of the overhead
        benchmark). init_noise (B, Ta, Da) ~ N(0, I), when given, is used for x_K instead of a
        fresh draw (scaled by init_noise_scale like one): rollouts that share it differ only in
        the scored steps."""
        cfg, mcfg = self.cfg, self.model_cfg
        B, device = len(obs), obs.images.device
        n_exec = self.executed_steps()
        shape = (B, mcfg.horizon, mcfg.action_dim)
        if init_noise is None:
            init_noise = torch.randn(shape, generator=generator, device=device)
        elif init_noise.shape != shape:
            raise ValueError(f"init_noise must have shape {shape}, got {tuple(init_noise.shape)}")
        cond = model.encode(obs)                                             # (B, C)
        x = self.prefix(model, obs, init_noise, cond)                        # x_{K'}
        chain, log_probs = [x] if record else [], []
        for i in range(self.first_stochastic, cfg.num_inference_steps):
            idx = torch.full((B,), i, dtype=torch.long, device=device)
            eps = model(x, self.timesteps.to(device)[idx], cond)
            mean, sigma = self.step_mean_std(x, eps, idx, not deterministic)
            if not deterministic:
                z = torch.randn(x.shape, generator=generator, device=device)
                if cfg.noise_clip > 0:
                    z = z.clamp(-cfg.noise_clip, cfg.noise_clip)
                x_prev = mean + sigma.clamp(min=cfg.min_sampling_std) * z
                if record:
                    log_probs.append(self.gaussian_log_prob(x_prev, mean, sigma, n_exec))
            else:
                x_prev = mean
            if record:
                chain.append(x_prev)
            x = x_prev
        chain_t = torch.stack(chain, 1) if chain else x[:, None]             # (B, K'+1, Ta, Da)
        lp = torch.stack(log_probs, 1) if log_probs else torch.zeros(B, 0, device=device)
        return Chunk(model.normalizer.unnormalize_action(x[:, self.offset:]), chain_t, lp, n_exec)

    @torch.no_grad()
    def prefix(self, model: TinyVLAPolicy, obs: Observation, init_noise: torch.Tensor,
               cond: torch.Tensor | None = None) -> torch.Tensor:
        """x_{K'} from x_K = init_noise * init_noise_scale (B, Ta, Da): the K - K' unscored,
        deterministic steps, run by the frozen SFT copy when the sampler has one (then `cond`,
        the trained model's encoding, is not used), by `model` otherwise."""
        if self.cfg.frozen_prefix and self.prefix_model is None and self.first_stochastic > 0:
            raise ValueError("frozen_prefix is set but the sampler holds no SFT model: build it "
                             "with DiffusionSampler(..., sft_model=model) before training")
        x = init_noise.to(obs.images.device) * self.cfg.init_noise_scale         # x_K
        if self.first_stochastic == 0:
            return x
        net = self.prefix_model if self.prefix_model is not None else model
        if net is not model or cond is None:
            cond = net.encode(obs)
        for i in range(self.first_stochastic):
            idx = torch.full((len(obs),), i, dtype=torch.long, device=x.device)
            eps = net(x, self.timesteps.to(x.device)[idx], cond)
            x, _ = self.step_mean_std(x, eps, idx, stochastic=False)
        return x

    def chain_log_prob(self, model: TinyVLAPolicy, obs: Observation, chain: torch.Tensor,
                       n_exec: int | None = None, cond: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Re-score stored chains (B, K'+1, Ta, Da) -> (B, K') in one batched forward."""
        self.check_chain(chain)
        B, K1 = chain.shape[:2]
        Kp = K1 - 1
        n_exec = self.executed_steps() if n_exec is None else n_exec
        cond = model.encode(obs) if cond is None else cond                   # (B, C)
        x_k = chain[:, :-1].reshape(B * Kp, *chain.shape[2:])                 # (B*K', Ta, Da)
        x_prev = chain[:, 1:].reshape(B * Kp, *chain.shape[2:])
        idx = self.stochastic_indices.to(chain.device).repeat(B)            # (B*K',)
        eps = model(x_k, self.timesteps.to(chain.device)[idx], cond.repeat_interleave(Kp, 0))
        mean, sigma = self.step_mean_std(x_k, eps, idx, stochastic=True)
        return self.gaussian_log_prob(x_prev, mean, sigma, n_exec).view(B, Kp)

    def check_chain(self, chain: torch.Tensor) -> None:
        """A stored chain must hold the K'+1 states of this sampler's scored steps."""
        if chain.shape[1] - 1 != self.cfg.stochastic_steps:
            raise ValueError(f"chain has {chain.shape[1]} states, the sampler fine-tunes "
                             f"{self.cfg.stochastic_steps} steps")

    def chain_log_prob_per_step(self, model: TinyVLAPolicy, obs: Observation,
                                chain: torch.Tensor, n_exec: int | None = None) -> torch.Tensor:
        """Reference re-scoring, one full policy call (encode + head) per step: for parity tests
        and the batched-vs-per-step benchmark."""
        n_exec = self.executed_steps() if n_exec is None else n_exec
        self.check_chain(chain)
        out = []
        for j, i in enumerate(self.stochastic_indices.tolist()):
            idx = torch.full((chain.shape[0],), i, dtype=torch.long, device=chain.device)
            eps = model(chain[:, j], self.timesteps.to(chain.device)[idx], model.encode(obs))
            mean, sigma = self.step_mean_std(chain[:, j], eps, idx, stochastic=True)
            out.append(self.gaussian_log_prob(chain[:, j + 1], mean, sigma, n_exec))
        return torch.stack(out, 1)
