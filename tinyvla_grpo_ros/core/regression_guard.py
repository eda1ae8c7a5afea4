"""The regression guard: roll back a version whose evaluation fell below its predecessor's.

Each evaluated version is compared with the newest *kept* version evaluated before it (the one
the policy would return to). When its success rate is lower by more than `margin`, the guard
says to roll back to that version; the bad version is never a reference again. A rollback is
carried out as a new version that copies the good one (versions only ever go up), which carries
the good version's evaluation: `restored()` records that, so it is not evaluated again.

Evaluation episodes are few, so the margin must be wider than their noise: with n episodes per
evaluation, a binomial standard error of sqrt(p (1 - p) / n) is ~0.18 at n = 8, p = 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Evaluation:
    version: int
    successes: int
    episodes: int
    restored_from: int | None = None

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


@dataclass
class GuardDecision:
    version: int
    rollback_to: int | None       # None: keep `version`
    reason: str


@dataclass
class RegressionGuard:
    margin: float = 0.2
    min_episodes: int = 1
    evaluations: dict[int, Evaluation] = field(default_factory=dict)
    rolled_back: set[int] = field(default_factory=set)
    events: list[GuardDecision] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"guard margin must lie in [0, 1], got {self.margin}")
        if self.min_episodes < 1:
            raise ValueError(f"min_episodes must be >= 1, got {self.min_episodes}")

    def reference(self, version: int) -> Evaluation | None:
        """The newest kept, evaluated version older than `version`."""
        older = [e for v, e in self.evaluations.items()
                 if v < version and v not in self.rolled_back]
        return max(older, key=lambda e: e.version) if older else None

    def needs_evaluation(self, version: int) -> bool:
        return version not in self.evaluations

    def record(self, version: int, successes: int, episodes: int) -> GuardDecision:
        """Add an evaluation of `version` (repeated evaluations add up) and decide."""
        e = self.evaluations.setdefault(version, Evaluation(version, 0, 0))
        e.successes += successes
        e.episodes += episodes
        ref = self.reference(version)
        if ref is None:
            return self._decide(version, None, f"v{version}: {e.rate:.2f} over {e.episodes} "
                                "evaluation episodes (first evaluated version: the reference)")
        text = (f"v{version}: {e.rate:.2f} over {e.episodes} evaluation episodes, "
                f"v{ref.version}: {ref.rate:.2f} over {ref.episodes}, margin {self.margin:.2f}")
        if e.episodes >= self.min_episodes and e.rate < ref.rate - self.margin:
            self.rolled_back.add(version)
            return self._decide(version, ref.version, f"regression: {text}")
        return self._decide(version, None, f"kept: {text}")

    def restored(self, new_version: int, source: int) -> None:
        """`new_version` is a copy of `source`: it has `source`'s evaluation."""
        src = self.evaluations.get(source)
        if src is not None:
            self.evaluations[new_version] = Evaluation(new_version, src.successes, src.episodes,
                                                       restored_from=source)

    def _decide(self, version: int, target: int | None, reason: str) -> GuardDecision:
        d = GuardDecision(version, target, reason)
        self.events.append(d)
        return d
