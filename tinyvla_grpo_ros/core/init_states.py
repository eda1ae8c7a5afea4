"""Which initial states the next groups start from: `uniform`, `skip_solved` or `informative`.

A group of G rollouts from one initial state carries GRPO signal only when its rewards differ:
a group that all succeeds or all fails is skipped by the learner (grpo.group_advantages), and its
G episodes were spent for nothing. On a robot every episode costs an operator's reset, so the
episode manager (and the in-process runner of bench/bench_learning.py) can steer groups towards
the initial states where the current policy's outcome is still uncertain.

Notation: for an init state i, (s_i, n_i) = successes and episodes of its *latest* group (the
policy changes with every version, so older groups say little about it); unseen: (0, 0).

    uniform      w_i = 1
    skip_solved  w_i = 0 if s_i = n_i > 0 (the latest group all succeeded), else 1
    informative  w_i = E[p (1 - p)] under p ~ Beta(1/2 + s_i, 1/2 + n_i - s_i)   (Jeffreys prior)
                     = a b / ((a + b)(a + b + 1)),  a = 1/2 + s_i, b = 1/2 + n_i - s_i

`informative` weighs a state by the expected Bernoulli variance of its success: an unseen state
0.125, a latest group of 4/8 0.225, of 8/8 or 0/8 0.047: mixed states come back more often,
solved and hopeless ones less, but never not at all (the policy may have changed there). In a
simulated cell of 8 hopeless, 8 solved and 4 even states, 0.49 of its groups carry signal
against 0.21 drawn uniformly and 0.34 skipping solved states (test_init_states.py). States are
drawn without replacement with probability proportional to w; when fewer than n weights are
positive (everything solved), the zero-weight states fill the rest, uniformly.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SAMPLING_MODES = ("uniform", "skip_solved", "informative")
OUTCOME_CLASSES = ("never", "mixed", "always")


def check_mode(mode: str) -> str:
    if mode not in SAMPLING_MODES:
        raise ValueError(f"init_state_sampling must be one of {SAMPLING_MODES}, got {mode!r}")
    return mode


def latest_groups(groups: Iterable[tuple[int, Sequence[bool]]]) -> dict[int, tuple[int, int]]:
    """(init id, successes of one group), oldest first -> {init id: (successes, episodes)} of
    each state's latest group."""
    out: dict[int, tuple[int, int]] = {}
    for init_id, successes in groups:
        out[int(init_id)] = (int(sum(bool(s) for s in successes)), len(successes))
    return out


def init_state_weights(ids: Sequence[int], latest: dict[int, tuple[int, int]],
                       mode: str) -> np.ndarray:
    """(len(ids),) non-negative weights of `mode` (module docstring)."""
    check_mode(mode)
    w = np.ones(len(ids))
    for j, i in enumerate(ids):
        s, n = latest.get(int(i), (0, 0))
        if mode == "skip_solved":
            w[j] = 0.0 if n > 0 and s == n else 1.0
        elif mode == "informative":
            a, b = 0.5 + s, 0.5 + n - s
            w[j] = a * b / ((a + b) * (a + b + 1.0))
    return w


def pick_init_states(ids: Sequence[int], latest: dict[int, tuple[int, int]], mode: str,
                     rng: np.random.Generator, n: int = 1) -> list[int]:
    """`n` distinct init states (n <= len(ids)) drawn by `mode`'s weights."""
    if not 1 <= n <= len(ids):
        raise ValueError(f"cannot draw {n} distinct init states from {len(ids)}")
    w = init_state_weights(ids, latest, mode)
    if np.count_nonzero(w) < n:          # everything solved: any state will do
        w = np.where(w > 0, w, w[w > 0].min(initial=1.0) * 1e-3)
    return [int(i) for i in rng.choice(np.asarray(ids), n, replace=False, p=w / w.sum())]


def outcome_classes(successes: Sequence[int], rollouts: int) -> dict[str, int]:
    """Successes of `rollouts` stochastic rollouts per init state -> how many states the policy
    never, sometimes ("mixed") or always solves. Only mixed states give a group with signal: a
    state that is never solved teaches GRPO nothing until the policy's noise finds a success."""
    if rollouts < 1:
        raise ValueError(f"rollouts must be >= 1, got {rollouts}")
    bad = [s for s in successes if not 0 <= s <= rollouts]
    if bad:
        raise ValueError(f"successes must lie in [0, {rollouts}], got {bad}")
    never = sum(1 for s in successes if s == 0)
    always = sum(1 for s in successes if s == rollouts)
    return {"never": never, "mixed": len(successes) - never - always, "always": always}
