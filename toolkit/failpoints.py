"""Crash points for the crash-consistency tests.

``TOOLKIT_CRASH_AT=NAME:N[,NAME:N...]`` makes the process SIGKILL itself the N-th time it reaches
``crash_point(NAME)``: stopped there as a power cut, an OOM kill or a preempted node would stop it,
with no cleanup. Unset (always, outside those tests), a crash point is one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter


def _plan(text: str) -> dict[str, int]:
    plan = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.rpartition(":")
        plan[name] = int(count)
    return plan


_PLAN = _plan(os.environ.get("TOOLKIT_CRASH_AT", ""))
_hits: Counter = Counter()


def crash_point(name: str) -> None:
    if name in _PLAN:
        _hits[name] += 1
        if _hits[name] == _PLAN[name]:
            os.kill(os.getpid(), signal.SIGKILL)
