"""Named points where a crash test can stop a process on purpose (fault injection).

    TINYVLA_FAILPOINTS="atomic_write@v0001/adapter_model.safetensors=pause"

Each comma-separated item is `<name>[@<substring of the detail>]=<action>`; the only action is
`pause`: print a line naming the point to stderr and sleep until killed, so that a test can
SIGKILL the process at exactly that point (e.g. half-way through writing an adapter file).
Unset in normal operation, where `failpoint()` costs one environment lookup.
"""
from __future__ import annotations

import os
import sys
import time

ENV = "TINYVLA_FAILPOINTS"


def failpoint(name: str, detail: str = "") -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        key, _, action = item.strip().partition("=")
        point, _, match = key.partition("@")
        if point != name or (match and match not in detail):
            continue
        if action != "pause":
            raise ValueError(f"{ENV}: unknown action {action!r} in {item!r} (known: pause)")
        print(f"FAILPOINT {name} reached at {detail}: pausing until killed", file=sys.stderr,
              flush=True)
        while True:
            time.sleep(3600)
