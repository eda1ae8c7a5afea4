"""GRPO on a Meta-World task in one process: the learning experiments of bench/learning.py.

The same core as the ROS loop (sampler, adapters, GRPOLearner, EpisodeRecord), without the
transport: a group's G episodes run in lock-step in G scenes so that one batched sampler call
serves all of them (the model runs once per decision point, not G times).

As on a robot, the task has a fixed cell of `pool_size` initial states (never seen in the SFT
demonstrations); each update draws `groups_per_update` of them and runs G stochastic rollouts of
each (drawn by `init_sampling`, core/init_states.py, as the episode manager draws them);
success is the deterministic (mean-chain) success over the whole cell, measured every
`eval_every` updates. Deterministic denoising still starts from a random x_K, and on some tasks
x_K decides the outcome of most states, so each evaluation averages `eval_draws` draws of x_K,
and draw j is the same in every evaluation of the run (`run_lockstep(noise_key=...)`): SFT,
every later version and the kept version are compared on the same x_K, state by state.
Success on held-out init states (the SFT checkpoint's own evaluation set) is measured before and
after, to show how far the gain carries beyond the cell.

Two results per run: the *last* version (the raw learner), and the *kept* version: the one with
the best cell evaluation, SFT included (what the regression guard and `select_adapter` leave on
the robot). The kept version is chosen on the cell, so its cell figure is biased upwards; its
held-out figure is not (those states played no part in choosing it).

With `state_rollouts` = n > 0, each cell state also gets n stochastic rollouts at the SFT start
and at the last version: how many states the policy never, sometimes or always solves
(core/init_states.outcome_classes). GRPO from outcome rewards learns only on the "sometimes"
states, so the SFT split bounds what it can lift within a budget.

With `explore_window` = W > 0, each group explores in a window of W decisions only, drawn per
group, and takes the deterministic chunk everywhere else, its G rollouts sharing x_K at every
decision (common random numbers): they are one episode until the window, and their outcomes
differ only through the scored noise inside it. GRPO then credits the W chunks whose noise made
the difference, not all of an episode's chunks, and improves the deterministic policy that the
evaluation measures. Measured in the README ("Variants tried").
"""
from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.adapters import AdaptedPolicy, AdapterConfig
from ..core.checkpoint import load_checkpoint
from ..core.grpo import outcome_reward
from ..core.init_states import check_mode, latest_groups, outcome_classes, pick_init_states
from ..core.learner import GRPOConfig, GRPOLearner
from ..core.rollout_store import EpisodeRecord
from ..core.sampler import DiffusionSampler, paired_init_noise
from .metaworld_scene import MetaWorldScene
from .rollout import scene_observation
from .sft_start import EVAL_FIRST_ID

CELL_FIRST_ID = 2_000           # the cell's init states: 2000 + 100 * seed + i


@dataclass
class LockstepEpisode:
    init_state_id: int
    success: bool = False
    steps: int = 0
    progress: float = 0.0       # best shaped task reward of the episode, [0, 1]
    frames: list[dict[str, torch.Tensor]] = field(default_factory=list)


@torch.no_grad()
def run_lockstep(scenes: list[MetaWorldScene], model, sampler: DiffusionSampler,
                 init_ids: list[int], deterministic: bool, generator: torch.Generator,
                 record: bool = False, shared_init_noise: int = 0,
                 noise_key: int | None = None, explore: list[range] | None = None
                 ) -> list[LockstepEpisode]:
    """One episode per init id, scene i running init_ids[i]; batched decisions.

    shared_init_noise = G > 0: episodes i // G (a group) share x_K at each decision index, so
    that within a group outcomes differ only through the scored steps (common random numbers).

    noise_key = k: the x_K of the episode of init id i at decision index d is drawn from its own
    generator, seeded by (k, i, d) (`core.sampler.paired_init_noise`). The draw then belongs to
    the state and the decision, not to the batch: two evaluations with the same key meet the same
    x_K in every state at every decision, whichever other episodes ran beside them or ended
    earlier. Without it, x_K comes from `generator` for the episodes still running, so once two
    versions end an episode at different steps, the later draws fall to other states.

    explore = [range, ...] (one per episode, with deterministic=False): episode i samples
    stochastically, and records, only at the decision indices in explore[i]; at every other
    decision it takes the deterministic (mean-chain) chunk, the one an evaluation takes. With
    shared_init_noise, the G rollouts of a group are then one and the same episode up to the
    window and differ only through the scored noise inside it."""
    if len(init_ids) > len(scenes):
        raise ValueError(f"{len(init_ids)} episodes need as many scenes, have {len(scenes)}")
    if shared_init_noise < 0:
        raise ValueError(f"shared_init_noise is a group size (0 = off), got {shared_init_noise}")
    if shared_init_noise and noise_key is not None:
        raise ValueError("shared_init_noise and noise_key both choose x_K: pass one of them")
    if explore is not None and (deterministic or len(explore) != len(init_ids)):
        raise ValueError(f"explore needs deterministic=False and one window per episode "
                         f"({len(init_ids)}), got deterministic={deterministic} and "
                         f"{len(explore)} windows")
    eps = [LockstepEpisode(i) for i in init_ids]
    for scene, i in zip(scenes, init_ids):
        scene.reset(i)
    active = list(range(len(init_ids)))
    n_exec = sampler.executed_steps()
    decision = 0
    while active:
        parts = [scene_observation(scenes[k]) for k in active]
        obs = type(parts[0])(torch.cat([p.images for p in parts]),
                             torch.cat([p.state for p in parts]),
                             [s for p in parts for s in p.instruction])
        init_noise = None
        if shared_init_noise:
            per_group = torch.randn((-(-len(init_ids) // shared_init_noise), model.config.horizon,
                                     model.config.action_dim), generator=generator)
            init_noise = per_group[[k // shared_init_noise for k in active]]
        elif noise_key is not None:
            init_noise = paired_init_noise(noise_key, [init_ids[k] for k in active], decision,
                                           (model.config.horizon, model.config.action_dim))
        if explore is None:
            splits = [(torch.arange(len(active)), deterministic)]
        else:
            mask = torch.tensor([decision in explore[k] for k in active])
            splits = [(mask.nonzero().squeeze(1), False), ((~mask).nonzero().squeeze(1), True)]
        decision += 1
        actions = torch.empty((len(active), model.config.horizon, model.config.action_dim))
        for rows, det in splits:
            if not len(rows):
                continue
            part = obs if len(rows) == len(active) else obs.select(rows)
            chunk = sampler.sample(model, part, generator, deterministic=det,
                                   init_noise=None if init_noise is None else init_noise[rows])
            actions[rows] = chunk.actions
            for j, row in enumerate(rows.tolist()):
                if record and not (explore is not None and det):
                    eps[active[row]].frames.append({
                        "images": part.images[j], "states": part.state[j],
                        "chains": chunk.chain[j], "log_probs": chunk.log_probs[j]})
        still = []
        for row, k in enumerate(active):
            for a in actions[row, :n_exec].numpy():
                r = scenes[k].step(a)
                if r.done:
                    eps[k].success, eps[k].steps, eps[k].progress = r.success, r.steps, \
                        r.progress
                    break
            else:
                still.append(k)
        active = still
    return eps


def credit_at_random(eps: list[LockstepEpisode], G: int, rng: np.random.Generator) -> None:
    """The null experiment: within each group of G, the outcomes (success and progress) go to
    the episodes in a random order. Same outcomes, so the same advantages and update sizes, and
    no signal in which rollout earned them: what the updates alone do to success."""
    for g in range(0, len(eps), G):
        part = eps[g:g + G]
        outcomes = [(e.success, e.progress) for e in part]
        for e, j in zip(part, rng.permutation(len(part))):
            e.success, e.progress = outcomes[j]


def to_records(eps: list[LockstepEpisode], group_id: str, task: str, adapter: str, version: int,
               instruction: str, n_exec: int, progress_weight: float = 0.0
               ) -> list[EpisodeRecord]:
    out = []
    for j, e in enumerate(eps):
        stack = lambda k, e=e: torch.stack([f[k] for f in e.frames])  # noqa: E731
        tensors = {"images": stack("images"), "states": stack("states"),
                   "chains": stack("chains"), "log_probs": stack("log_probs"),
                   "executed": torch.full((len(e.frames),), n_exec)} if e.frames else {}
        out.append(EpisodeRecord(
            episode_id=f"{group_id}-e{j}", group_id=group_id, task=task,
            init_state_id=e.init_state_id, adapter_name=adapter, adapter_version=version,
            instruction=instruction,
            reward=outcome_reward(e.success, e.progress, progress_weight), success=e.success,
            tensors=tensors))
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_metaworld_grpo(checkpoint, task: str, seed: int = 0, episodes: int = 384,
                       preset: str = "adapters", grpo: GRPOConfig | None = None,
                       groups_per_update: int = 2, pool_size: int = 20, heldout: int = 20,
                       eval_every: int = 4, lora_rank: int = 8,
                       sampler_overrides: dict | None = None, init_sampling: str = "uniform",
                       state_rollouts: int = 0, group_init_noise: bool = False,
                       shuffle_rewards: bool = False, eval_draws: int = 1,
                       noise_prior: bool = False, progress_weight: float = 0.0,
                       explore_window: int = 0, log=print, **scene_kw) -> dict:
    t_start = time.time()
    check_mode(init_sampling)
    outcome_reward(False, 0.0, progress_weight)     # refuses a bad weight before any work
    if not 1 <= eval_draws <= 1_000:    # noise keys 1000 seed + j stay apart between seeds
        raise ValueError(f"eval_draws must be in 1..1000, got {eval_draws}")
    torch.manual_seed(seed)
    model, scfg, meta = load_checkpoint(checkpoint)
    scfg = dataclasses.replace(scfg, **(sampler_overrides or {}))   # e.g. K', the noise floor
    grpo = grpo or GRPOConfig(device="cpu")
    G = grpo.group_size
    policy = AdaptedPolicy(model, AdapterConfig(preset=preset, rank=lora_rank,
                                                 noise_prior=noise_prior), [task])
    sampler = DiffusionSampler(model.config, scfg)
    learner = GRPOLearner(policy, sampler, grpo)
    n_scenes = max(G * groups_per_update, pool_size, heldout)
    scenes = [MetaWorldScene(task, image_size=model.config.image_size, **scene_kw)
              for _ in range(n_scenes)]
    instruction = scenes[0].instruction
    decisions = -(-scenes[0].max_steps // sampler.executed_steps())     # of a whole episode
    if not 0 <= explore_window <= decisions:
        raise ValueError(f"explore_window must be in 0..{decisions} (decisions of an episode), "
                         f"got {explore_window}")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cell = [CELL_FIRST_ID + 100 * seed + i for i in range(pool_size)]
    held = list(range(EVAL_FIRST_ID, EVAL_FIRST_ID + heldout))

    draws_log: dict[str, list[list[float]]] = {"cell": [], "heldout": []}

    def success(which: str) -> float:
        """Deterministic success on the cell or the held-out states, the mean over `eval_draws`
        paired x_K draws: draw j of every evaluation in this run uses noise key (seed, j), so
        versions meet the same x_K."""
        ids = cell if which == "cell" else held
        per_draw = [float(np.mean([e.success for e in run_lockstep(
            scenes, policy.model, sampler, ids, True, torch.Generator(),
            noise_key=1_000 * seed + j)])) for j in range(eval_draws)]
        draws_log[which].append(per_draw)
        return float(np.mean(per_draw))

    def state_successes(ids: list[int]) -> list[int]:
        """Successes of `state_rollouts` stochastic rollouts per state (same noise seed each
        time it is called, so SFT and last version meet the same draws of x_K)."""
        counts = np.zeros(len(ids), dtype=int)
        g = torch.Generator().manual_seed(10_000 + seed)
        for _ in range(state_rollouts):
            for k in range(0, len(ids), len(scenes)):
                part = ids[k:k + len(scenes)]
                counts[k:k + len(part)] += [e.success for e in
                                            run_lockstep(scenes, policy.model, sampler, part,
                                                         False, g)]
        return counts.tolist()

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in policy.model.named_parameters()
                if p.requires_grad}

    before, held_before = success("cell"), success("heldout")
    log(f"[{task} s{seed} {preset}] SFT: cell {before:.2f}, held-out {held_before:.2f}")
    outcomes: dict = {}
    if state_rollouts:
        outcomes = {"rollouts": state_rollouts, "sft": state_successes(cell)}
        outcomes["sft_classes"] = outcome_classes(outcomes["sft"], state_rollouts)
        log(f"[{task} s{seed} {preset}] SFT cell states never/mixed/always solved in "
            f"{state_rollouts} rollouts: {outcomes['sft_classes']}")
    curve = [(0, before)]
    kept = {"version": 0, "cell": before, "episodes": 0, "params": snapshot()}
    explore: list[tuple[int, float]] = []
    stats_log, learner_s, done, version, peak_update_mb = [], 0.0, 0, 0, 0.0
    latest: dict[int, tuple[int, int]] = {}     # init id -> (successes, G) of its latest group
    updates = episodes // (G * groups_per_update)
    for u in range(updates):
        picks = pick_init_states(cell, latest, init_sampling, rng, groups_per_update)
        ids = [i for i in picks for _ in range(G)]
        windows = None
        if explore_window:          # one window per group, shared by its G rollouts
            starts = rng.integers(0, decisions - explore_window + 1, size=len(picks))
            windows = [range(int(s0), int(s0) + explore_window) for s0 in starts
                       for _ in range(G)]
        eps = run_lockstep(scenes, policy.model, sampler, ids, False, gen, record=True,
                           shared_init_noise=G if group_init_noise or explore_window else 0,
                           explore=windows)
        latest.update(latest_groups((i, [e.success for e in eps[g * G:(g + 1) * G]])
                                    for g, i in enumerate(picks)))
        if shuffle_rewards:
            credit_at_random(eps, G, rng)
        groups = [to_records(eps[g * G:(g + 1) * G], f"u{u:03d}-g{g}", task, task, version,
                             instruction, sampler.executed_steps(), progress_weight)
                  for g in range(groups_per_update)]
        done += len(ids)
        explore.append((done, float(np.mean([e.success for e in eps]))))
        t0, rss0 = time.perf_counter(), rss_mb()
        st = learner.update(groups, generator=gen)
        learner_s += time.perf_counter() - t0
        peak_update_mb = max(peak_update_mb, rss_mb() - rss0)
        if st.optimizer_steps:
            version += 1
        stats_log.append({"update": u, "episodes": done, **st.as_dict()})
        if (u + 1) % eval_every == 0 or u == updates - 1:
            curve.append((done, success("cell")))
            if curve[-1][1] >= kept["cell"]:
                kept = {"version": version, "cell": curve[-1][1], "episodes": done,
                        "params": snapshot()}
            log(f"[{task} s{seed} {preset}] {done} episodes, v{version}: cell success "
                f"{curve[-1][1]:.2f} (explore {explore[-1][1]:.2f}, approx_kl "
                f"{st.approx_kl:.3f}, clip {st.clip_fraction:.2f})")
    held_after = success("heldout")
    if state_rollouts:
        outcomes["last"] = state_successes(cell)
        outcomes["last_classes"] = outcome_classes(outcomes["last"], state_rollouts)
        log(f"[{task} s{seed} {preset}] v{version} cell states never/mixed/always solved: "
            f"{outcomes['last_classes']}")
    held_kept = held_after
    if kept["version"] != version:
        with torch.no_grad():
            params = dict(policy.model.named_parameters())
            for n, t in kept["params"].items():
                params[n].copy_(t)
        held_kept = success("heldout")
    log(f"[{task} s{seed} {preset}] kept v{kept['version']} (cell {kept['cell']:.2f}): "
        f"held-out {held_before:.2f} -> {held_kept:.2f}; last v{version}: held-out "
        f"{held_after:.2f}")
    for s in scenes:
        s.close()
    return {
        "task": task, "seed": seed, "preset": preset, "checkpoint": str(checkpoint),
        "sft_checkpoint_success": meta.get("sft_success"),
        "sft_success": before, "final_success": curve[-1][1],
        "best_success": max(r for _, r in curve), "episodes": done,
        "heldout_sft_success": held_before, "heldout_final_success": held_after,
        "kept_version": kept["version"], "kept_episodes": kept["episodes"],
        "kept_success": kept["cell"], "heldout_kept_success": held_kept,
        "cell": cell, "heldout": [held[0], held[-1]], "curve": curve, "explore_curve": explore,
        "eval_draws": eval_draws, "eval_draw_success": draws_log,
        "versions": version, "learner_seconds": round(learner_s, 2),
        "learner_seconds_per_update": round(learner_s / max(1, updates), 3),
        "trainable_params": sum(p.numel() for p in policy.trainable_parameters()),
        "update_rss_growth_mb": round(peak_update_mb, 1),
        "wall_seconds": round(time.time() - t_start, 1), "updates": stats_log,
        "grpo": {k: getattr(grpo, k) for k in ("group_size", "lr", "epochs", "minibatch_size",
                                                "clip_low", "clip_high", "kl_coef",
                                                "target_kl", "warmup_steps",
                                                "base_lr_scale", "loss_aggregation",
                                                "ratio", "elbo_samples",
                                                "negative_advantage_scale",
                                                "noise_prior_lr_scale")},
        "groups_per_update": groups_per_update, "lora_rank": lora_rank,
        "init_sampling": init_sampling, "group_init_noise": group_init_noise,
        "shuffle_rewards": shuffle_rewards, "noise_prior": noise_prior,
        "progress_weight": progress_weight, "explore_window": explore_window,
        "state_outcomes": outcomes,
        "sampler": scfg.to_dict()}
