"""95% intervals for success rates: one rate (Wilson) and a paired difference (normal).

Success rates here are means of 0/1 outcomes over init states (a state's outcome may itself be
a mean over x_K draws). A difference between two versions or methods evaluated on the same
states is paired: its interval comes from the per-state differences, which is much narrower
than two independent intervals when the states dominate the variance.
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate successes / n (n = 0 -> (0, 1))."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_interval(diffs, z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences; a normal interval over them (nan with one)."""
    d = np.asarray(list(diffs), dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    half = z * d.std(ddof=1) / math.sqrt(d.size) if d.size > 1 else float("nan")
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)
