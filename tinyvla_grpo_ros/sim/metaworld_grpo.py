"""GRPO on a Meta-World task in one process: the runner of bench/bench_learning.py.

The same core as the ROS loop (sampler, adapters, GRPOLearner, EpisodeRecord), without the
transport: a group's G episodes run in lock-step in G scenes so that one batched sampler call
serves all of them (`sim.rollout.run_lockstep`).

As on a robot, the task has a fixed cell of `cell` initial states (never seen in the SFT
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
(core/init_states.outcome_classes). With `shuffle_credit`, the null experiment: each group's
outcomes go to its episodes in a random order (what the updates alone do to success).
"""
from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.adapters import PRESETS, AdaptedPolicy, AdapterConfig
from ..core.checkpoint import load_checkpoint
from ..core.config import GRPOConfig
from ..core.corrections import OperatorConfig, correction_chunks
from ..core.init_states import SAMPLING_MODES, latest_groups, outcome_classes, pick_init_states
from ..core.learner import GRPOLearner
from ..core.model import Observation
from ..core.recipe import check_ranges, setting
from ..core.rollout_store import EpisodeRecord, episode_record
from ..core.sampler import DiffusionSampler
from .metaworld_scene import MetaWorldScene
from .rollout import LockstepEpisode, run_lockstep
from .sft_start import EVAL_FIRST_ID

CELL_FIRST_ID = 2_000           # the cell's init states: 2000 + 100 * seed + i


@dataclass(frozen=True)
class RunConfig:
    """One learning run of the bench: budget, cell, evaluation and what trains."""

    episodes: int = setting(384, "GRPO episodes per run (an update takes G x "
                            "groups_per_update of them)", lo=1, hi=10**7)
    groups_per_update: int = setting(2, "groups of G rollouts per learner update", lo=1,
                                     hi=1000)
    cell: int = setting(30, "init states in the task's cell (what the robot trains on)", lo=1,
                        hi=10_000)
    heldout: int = setting(20, "held-out init states, evaluated before and after", lo=1,
                           hi=10_000)
    eval_every: int = setting(4, "updates between evaluations of the cell", lo=1, hi=10**6)
    eval_draws: int = setting(2, "paired x_K draws each evaluation averages (the same draws "
                              "for every version of a run)", lo=1, hi=1000)
    init_sampling: str = setting("informative", "how each update draws its init states "
                                 "(core/init_states.py)", choices=SAMPLING_MODES)
    preset: str = setting("adapters+head+norms", "trainable set (core/adapters.py)",
                          choices=PRESETS)
    lora_rank: int = setting(8, "LoRA rank", lo=1, hi=256)
    goal_marker_radius: float = setting(0.04, "goal drawn this wide, m (rendering only)",
                                        lo=0.0, hi=1.0)
    max_steps: int = setting(150, "simulator steps before an episode times out", lo=1,
                             hi=100_000)
    state_rollouts: int = setting(0, "stochastic rollouts per cell state at SFT and at the "
                                  "last version (0 = skip)", lo=0, hi=1000)
    shuffle_credit: bool = setting(False, "the null experiment: each group's outcomes go to "
                                   "its episodes in a random order")

    def __post_init__(self) -> None:
        check_ranges(self)


def credit_at_random(eps: list[LockstepEpisode], G: int, rng: np.random.Generator) -> None:
    """The null experiment: within each group of G, the outcomes go to the episodes in a random
    order. Same outcomes, so the same advantages and update sizes, and no signal in which
    rollout earned them: what the updates alone do to success."""
    for g in range(0, len(eps), G):
        part = eps[g:g + G]
        outcomes = [e.success for e in part]
        for e, j in zip(part, rng.permutation(len(part))):
            e.success = outcomes[j]


def to_records(eps: list[LockstepEpisode], group_id: str, task: str, version: int,
               instruction: str, model=None) -> list[EpisodeRecord]:
    """Records of a group; with the model, its episodes' corrections cut into its chunks."""
    def corrections(e: LockstepEpisode) -> dict | None:
        if model is None or not e.operator_steps:
            return None
        return correction_chunks(e.operator_steps, model.config.horizon,
                                 model.normalizer.normalize_action)
    return [episode_record(e.frames, success=e.success, episode_id=f"{group_id}-e{j}",
                           group_id=group_id, task=task, init_state_id=e.init_state_id,
                           adapter_name=task, adapter_version=version, instruction=instruction,
                           corrections=corrections(e), corrected_steps=e.corrected_steps)
            for j, e in enumerate(eps)]


def probe_observations(eps: list[LockstepEpisode], instruction: str) -> Observation:
    """The first observation of every episode of an update: where x_{K'} is probed."""
    first = [e.frames[0] for e in eps if e.frames]
    return Observation(torch.stack([f["images"] for f in first]),
                       torch.stack([f["states"] for f in first]), [instruction] * len(first))


def probe_noise(obs: Observation, cfg) -> torch.Tensor:
    """The same x_K for the probe before and after an update."""
    return torch.randn((len(obs), cfg.horizon, cfg.action_dim),
                       generator=torch.Generator().manual_seed(0))


def prefix_shift(before: torch.Tensor, after: torch.Tensor, std_floor: float) -> float:
    """RMS change of x_{K'} over the probe, in units of the sampler's std floor: how far an update
    moved the input of the first scored step, which no ratio sees (0 with frozen_prefix)."""
    return float(((after - before) ** 2).mean().sqrt()) / max(std_floor, 1e-12)


def quarters(xs: list[float]) -> list[float]:
    """Means of the four quarters of a run's per-update values."""
    n = len(xs)
    return [float(np.mean(xs[q * n // 4:max(q * n // 4 + 1, (q + 1) * n // 4)])) if n else 0.0
            for q in range(4)]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_metaworld_grpo(checkpoint, task: str, seed: int = 0, run: RunConfig | None = None,
                       grpo: GRPOConfig | None = None, sampler_overrides: dict | None = None,
                       log=print, operator: OperatorConfig | None = None) -> dict:
    """One learning run: SFT start -> `run.episodes` GRPO episodes, evaluated on the way.
    operator: a simulated operator corrects the exploring rollouts (never the evaluations)."""
    t_start = time.time()
    run = run or RunConfig()
    torch.manual_seed(seed)
    model, scfg, meta = load_checkpoint(checkpoint)
    scfg = dataclasses.replace(scfg, **(sampler_overrides or {}))   # e.g. K', the noise floor
    grpo = grpo or GRPOConfig(device="cpu")
    G, preset, eval_draws, state_rollouts = grpo.group_size, run.preset, run.eval_draws, \
        run.state_rollouts
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)   # before the adapters
    policy = AdaptedPolicy(model, AdapterConfig(preset=preset, rank=run.lora_rank), [task])
    learner = GRPOLearner(policy, sampler, grpo)
    n_scenes = max(G * run.groups_per_update, run.cell, run.heldout)
    scenes = [MetaWorldScene(task, image_size=model.config.image_size, max_steps=run.max_steps,
                             goal_marker_radius=run.goal_marker_radius)
              for _ in range(n_scenes)]
    instruction = scenes[0].instruction
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cell = [CELL_FIRST_ID + 100 * seed + i for i in range(run.cell)]
    held = list(range(EVAL_FIRST_ID, EVAL_FIRST_ID + run.heldout))

    draws_log: dict[str, list[list[float]]] = {"cell": [], "heldout": []}
    states_log: dict[str, list[list[float]]] = {"cell": [], "heldout": []}   # per state

    def success(which: str) -> float:
        """Deterministic success on the cell or the held-out states, the mean over `eval_draws`
        paired x_K draws: draw j of every evaluation in this run uses noise key (seed, j), so
        versions meet the same x_K."""
        ids = cell if which == "cell" else held
        wins = np.array([[e.success for e in run_lockstep(
            scenes, policy.model, sampler, ids, True, torch.Generator(),
            noise_key=1_000 * seed + j)] for j in range(eval_draws)], dtype=float)
        draws_log[which].append(wins.mean(axis=1).tolist())
        states_log[which].append(wins.mean(axis=0).tolist())
        return float(np.mean(wins.mean(axis=1)))     # the mean of the draws' means

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
    updates = run.episodes // (G * run.groups_per_update)
    for u in range(updates):
        picks = pick_init_states(cell, latest, run.init_sampling, rng, run.groups_per_update)
        ids = [i for i in picks for _ in range(G)]
        eps = run_lockstep(scenes, policy.model, sampler, ids, False, gen, record=True,
                           operator=operator)
        latest.update(latest_groups((i, [e.success for e in eps[g * G:(g + 1) * G]])
                                    for g, i in enumerate(picks)))
        if run.shuffle_credit:
            credit_at_random(eps, G, rng)
        groups = [to_records(eps[g * G:(g + 1) * G], f"u{u:03d}-g{g}", task, version,
                             instruction, policy.model if operator else None)
                  for g in range(run.groups_per_update)]
        corrected = sum(e.corrected_steps for e in eps) / max(1, sum(
            e.steps or run.max_steps for e in eps))
        done += len(ids)
        explore.append((done, float(np.mean([e.success for e in eps]))))
        probe = probe_observations(eps, instruction)
        x_before = sampler.prefix(policy.model, probe, probe_noise(probe, model.config))
        t0, rss0 = time.perf_counter(), rss_mb()
        st = learner.update(groups, generator=gen)
        learner_s += time.perf_counter() - t0
        shift = prefix_shift(x_before, sampler.prefix(policy.model, probe, probe_noise(
            probe, model.config)), scfg.min_sampling_std)
        peak_update_mb = max(peak_update_mb, rss_mb() - rss0)
        if st.optimizer_steps:
            version += 1
        stats_log.append({"update": u, "episodes": done, "prefix_shift": shift,
                          "corrected_step_share": corrected,
                          "explore_success": explore[-1][1], **st.as_dict()})
        if (u + 1) % run.eval_every == 0 or u == updates - 1:
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
    if kept["version"] == 0:
        held_kept = held_before            # the SFT start, already evaluated on the same draws
    elif kept["version"] != version:
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
        # per state, the mean over the draws: cell [SFT, ..., last]; held-out [SFT, last(, kept)]
        "eval_state_success": states_log,
        "versions": version, "learner_seconds": round(learner_s, 2),
        "learner_seconds_per_update": round(learner_s / max(1, updates), 3),
        "trainable_params": sum(p.numel() for p in policy.trainable_parameters()),
        "update_rss_growth_mb": round(peak_update_mb, 1),
        "wall_seconds": round(time.time() - t_start, 1), "updates": stats_log,
        "grpo": dataclasses.asdict(grpo), "run": dataclasses.asdict(run),
        "operator": dataclasses.asdict(operator) if operator else None,
        "corrected_step_share_by_quarter": quarters([u["corrected_step_share"]
                                                     for u in stats_log]),
        "state_outcomes": outcomes, "sampler": scfg.to_dict()}
