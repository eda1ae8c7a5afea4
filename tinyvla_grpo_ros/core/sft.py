"""Behaviour cloning (SFT) of the policy on demonstrations: the "already SFT-trained" start.

Diffusion Policy's objective: for a demo window (obs_t, a_{t:t+Ta}), draw a timestep t ~ U[0, T)
and
noise eps, noise the normalized actions with the diffusers table (add_noise), and regress eps:
    L = || eps - eps_theta(sqrt(a_t) a + sqrt(1 - a_t) eps, t, c(obs)) ||^2
Windows that run past the end of an episode repeat the last action (the arm holds).
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch
from tqdm import tqdm

from .config import ModelConfig, SamplerConfig, SFTConfig
from .demos import Demonstration, load_demos
from .model import Observation, TinyVLAPolicy
from .sampler import build_scheduler


class DemoWindows:
    """All (episode, frame) windows of a demonstration set, batched on demand."""

    def __init__(self, demos: list[Demonstration], horizon: int) -> None:
        self.demos, self.horizon = demos, horizon
        self.index = [(e, f) for e, d in enumerate(demos) for f in range(d.images.shape[0])]

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: list[int]) -> tuple[Observation, torch.Tensor]:
        imgs, states, texts, acts = [], [], [], []
        for r in rows:
            e, f = self.index[r]
            d = self.demos[e]
            T, t = d.actions.shape[0], int(d.frame_steps[f])
            steps = torch.clamp(torch.arange(t, t + self.horizon), max=T - 1)
            imgs.append(d.images[f])
            states.append(d.states[t])
            texts.append(d.instruction)
            acts.append(d.actions[steps])
        return (Observation(torch.stack(imgs), torch.stack(states).float(), texts),
                torch.stack(acts).float())                                   # (B, Ta, Da)


def noise_draws(model: TinyVLAPolicy, shape, generator: torch.Generator | None,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """eps ~ N(0, I) of `shape` (B, Ta, Da) and t ~ U[0, T) per row, in this order."""
    noise = torch.randn(shape, generator=generator, device=device)
    t = torch.randint(model.config.num_train_timesteps, (shape[0],), generator=generator,
                      device=device)
    return noise, t


def denoising_loss(model: TinyVLAPolicy, sched, obs: Observation, a0: torch.Tensor,
                   generator: torch.Generator | None, steps: torch.Tensor | None = None,
                   cond: torch.Tensor | None = None, normalizer: float | None = None,
                   draws: tuple[torch.Tensor, torch.Tensor] | None = None,
                   offset: int = 0) -> torch.Tensor:
    """The eps-regression loss above on normalized chunks a0 (B, Ta, Da), the mean over its terms.

    steps (B,), when given: only the steps[b] actions of chunk b from index `offset` count (the
    executed ones; ModelConfig.action_offset), and the squared errors are summed and divided by
    `normalizer` (default: the counted terms of this batch; pass the whole batch's count to
    micro-batch). `sched` is
    `build_scheduler(..., "ddpm")` (the training table). draws = (noise, t), when given, are used
    instead of drawing them (a micro-batch takes its rows of the whole batch's draws)."""
    noise, t = draws if draws is not None else noise_draws(model, a0.shape, generator,
                                                          a0.device)
    x_t = sched.add_noise(a0, noise, t)
    cond = model.encode(obs) if cond is None else cond
    pred = model(x_t, t, cond)                                               # (B, Ta, Da)
    if steps is None:
        return torch.nn.functional.mse_loss(pred, noise)
    err = (pred - noise) ** 2
    idx = torch.arange(a0.shape[1], device=a0.device)[None]
    mask = ((idx >= offset) & (idx < offset + steps[:, None])).to(err.dtype)
    if normalizer is None:
        normalizer = float(mask.sum() * a0.shape[2])
    return (err * mask[..., None]).sum() / max(normalizer, 1.0)


def train_sft(model: TinyVLAPolicy, demos: list[Demonstration], cfg: SFTConfig,
              log_path: Path | None = None, progress: bool = True) -> list[float]:
    """Fit the normalizer on the demos, then train every parameter by eps regression."""
    if model.config.n_obs_steps != 1:
        raise ValueError(f"SFT here trains on one observation step; the model has n_obs_steps "
                         f"{model.config.n_obs_steps} (import such a policy trained elsewhere)")
    gen = torch.Generator().manual_seed(cfg.seed)
    data = DemoWindows(demos, model.config.horizon)
    model.normalizer.fit(torch.cat([d.actions for d in demos]).float(),
                         torch.cat([d.states for d in demos]).float())
    sched = build_scheduler(model.config, "ddpm")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (  # noqa: E731
        1 + math.cos(math.pi * s / cfg.steps))
    model.train()
    losses: list[float] = []
    writer = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "w", newline="")
        writer = csv.writer(log_file)
        writer.writerow(["step", "loss", "lr"])
    bar = tqdm(range(cfg.steps), desc="SFT", disable=not progress, mininterval=1.0)
    for step in bar:
        rows = torch.randint(len(data), (cfg.batch_size,), generator=gen).tolist()
        obs, actions = data.batch(rows)
        a0 = model.normalizer.normalize_action(actions)                      # (B, Ta, Da)
        loss = denoising_loss(model, sched, obs, a0, gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            writer.writerow([step, f"{loss.item():.6f}", f"{lr_at(step):.3g}"])
        if step % cfg.log_every == 0:
            recent = losses[-cfg.log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    if writer is not None:
        log_file.close()
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> None:
    from .checkpoint import save_checkpoint

    ap = argparse.ArgumentParser(description="Train an SFT checkpoint from demonstrations.")
    ap.add_argument("--demos", type=Path, required=True, help="demonstration episodes")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    ap.add_argument("--preset", default="tiny", help="model preset (config/models/<name>.yaml)")
    ap.add_argument("--steps", type=int, default=SFTConfig.steps)
    ap.add_argument("--batch-size", type=int, default=SFTConfig.batch_size)
    ap.add_argument("--lr", type=float, default=SFTConfig.lr)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    demos = load_demos(args.demos)
    d0 = demos[0]
    mcfg = ModelConfig.preset(args.preset, num_cameras=d0.images.shape[1],
                              state_dim=d0.states.shape[1], action_dim=d0.actions.shape[1])
    torch.manual_seed(args.seed)
    model = TinyVLAPolicy(mcfg)
    cfg = SFTConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    losses = train_sft(model, demos, cfg, log_path=args.out / "sft_loss.csv")
    save_checkpoint(args.out, model, SamplerConfig(),
                    meta={"sft_demos": len(demos), "sft_steps": cfg.steps,
                          "final_loss": sum(losses[-50:]) / len(losses[-50:])})
    print(f"wrote {args.out} ({len(demos)} demonstrations, final loss {losses[-1]:.4f})")


if __name__ == "__main__":
    main()
