"""Test-wide settings: DDS stays on this host, and every test gets its own ROS domain.

A fresh ROS_DOMAIN_ID per test keeps one test's processes (or the discovery data of a process
a test SIGKILLed) from being seen by the next test; the base is random per run so that two runs
on one machine do not share domains either.
"""
import itertools
import os
import random

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
_BASE = random.Random(os.getpid()).randint(1, 115)
_DOMAINS = itertools.count(1)
# Module-scoped fixtures start before the per-test domain is set: they get the run's own domain.
os.environ["ROS_DOMAIN_ID"] = str(_BASE)


@pytest.fixture(autouse=True)
def ros_domain(monkeypatch):
    domain = 1 + (_BASE + next(_DOMAINS)) % 230          # valid ids: 0..232 on Linux
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return domain
