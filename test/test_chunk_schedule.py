"""Chunk pipelining: decisions start `lead` before the current chunk ends; chunks run back to
back, each for its whole period, unless a decision is late."""
import pytest

from tinyvla_grpo_ros.core.chunk_schedule import ChunkSchedule


def test_pipelined_chunks_start_exactly_one_period_apart_when_decisions_are_on_time():
    s = ChunkSchedule(period_s=0.1, lead_s=0.04)
    assert s.due(0.0)
    starts, now = [], 0.0
    for _ in range(5):
        while not s.due(now):
            now = round(now + 0.001, 6)
        due = s.begin(now)
        starts.append(s.finished(due, now + 0.03))        # 30 ms decisions < 40 ms lead
    assert starts == pytest.approx([0.04 + 0.1 * k for k in range(5)])
    assert s.late == 0


def test_the_next_decision_starts_lead_before_the_current_chunk_ends():
    s = ChunkSchedule(period_s=0.1, lead_s=0.04)
    start = s.finished(s.begin(0.0), 0.02)
    assert not s.due(start + 0.1 - 0.041) and s.due(start + 0.1 - 0.04)


def test_a_late_decision_is_counted_and_moves_the_chunks_after_it():
    s = ChunkSchedule(period_s=0.1, lead_s=0.02)
    first = s.finished(s.begin(0.0), 0.01)                 # due 0.02, ready 0.01: on time
    due = s.begin(0.10)                                    # next due 0.12
    assert due == pytest.approx(0.12)
    real = s.finished(due, 0.15)                           # 30 ms late: the arm waited
    assert real == 0.15 and s.late == 1 and s.late_s_max == pytest.approx(0.03)
    assert first == 0.02 and s.next_start == pytest.approx(0.25)   # a whole period from 0.15


def test_without_a_lead_chunks_start_when_computed_and_decisions_follow_the_period():
    s = ChunkSchedule(period_s=0.1, lead_s=0.0)
    assert s.finished(s.begin(0.0), 0.03) == 0.03
    assert not s.due(0.099) and s.due(0.1)
    assert s.late == 0


def test_reset_starts_the_next_episode_at_once_and_bad_settings_are_refused():
    s = ChunkSchedule(period_s=0.1, lead_s=0.05)
    s.begin(0.0)
    assert not s.due(0.01)
    s.reset()
    assert s.due(0.01)
    for period, lead in ((0.1, -0.01), (-1.0, 0.0)):
        with pytest.raises(ValueError):
            ChunkSchedule(period, lead)
    assert ChunkSchedule(0.02, 0.05).lead == 0.02          # cut to the period
    every_image = ChunkSchedule(0.0, 0.05)                 # period 0: every fresh image,
    assert every_image.lead == 0.0 and every_image.due(5.0)   # nothing to pipeline
