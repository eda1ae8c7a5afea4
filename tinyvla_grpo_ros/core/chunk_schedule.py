"""When policy_node decides, and when each chunk starts on the arm (chunk pipelining).

Chunks run back to back: chunk k starts at s_k and its executed prefix lasts one period P
(executed_steps / control rate), so s_{k+1} = s_k + P. With a lead L > 0 the decision for chunk
k+1 starts at s_{k+1} - L, from the newest observation then, while chunk k still runs; its message
is stamped s_{k+1}, the time its first action is due, and the controller starts it then. As long
as a decision takes less than L the arm never waits for the model, and every chunk runs its whole
executed prefix, which is what the rollout records. L = 0 is today's behaviour: decide when the
current chunk ends and start the new one as soon as it is computed.

A decision that finishes after its chunk was due is late (the arm waited); the schedule then
goes on from when that chunk really started. Times are seconds on one monotonic clock. Pure: no
ROS, no threads (the node holds its own lock).
"""
from __future__ import annotations


class ChunkSchedule:
    def __init__(self, period_s: float, lead_s: float = 0.0) -> None:
        if period_s < 0:
            raise ValueError(f"the decision period must be >= 0, got {period_s}")
        if lead_s < 0:
            raise ValueError(f"the pipeline lead must be >= 0, got {lead_s}")
        # A lead longer than the period is cut to it (a decision then starts when the chunk
        # before starts); period 0 (a decision on every fresh image, a simulator's pace) has
        # nothing to pipeline.
        self.period, self.lead = period_s, min(lead_s, period_s)
        self.next_start: float | None = None      # when the next chunk is due on the arm
        self.late = 0                              # chunks that started after they were due
        self.late_s_max = 0.0

    def reset(self) -> None:
        """A new episode (or a hold): the next decision starts at once."""
        self.next_start = None

    def due(self, now: float) -> bool:
        """Whether a decision should start now."""
        return self.next_start is None or now >= self.next_start - self.lead

    def begin(self, now: float) -> float:
        """A decision starts now: the time its chunk is due on the arm (stamp it with this)."""
        if self.next_start is None:                # first chunk: as soon as it is computed
            start = now + self.lead
        else:
            start = max(self.next_start, now)
        self.next_start = start + self.period
        return start

    def finished(self, start: float, now: float) -> float:
        """The decision whose chunk was due at `start` is ready at `now`: the time the chunk
        starts on the arm. Without a lead, at once; with one, at `start`, or now when the
        decision was late (the arm waited, and the chunks after it move by as much)."""
        if self.lead == 0:
            return now
        if now <= start:
            return start
        self.late += 1
        self.late_s_max = max(self.late_s_max, now - start)
        if self.next_start is not None:
            self.next_start = max(self.next_start, now + self.period)
        return now
