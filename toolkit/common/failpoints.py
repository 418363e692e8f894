"""Crash points for the crash-consistency tests.

``TOOLKIT_CRASH_AT=NAME:N[,NAME:N...]`` makes the process SIGKILL itself the N-th time it reaches
``crash_point(NAME)``: stopped there as a power cut, an OOM kill or a preempted node would stop it,
with no cleanup. ``TOOLKIT_STOP_AT`` (same form) makes it SIGSTOP itself there instead, until a
SIGCONT: held still at a known step, as a suspended job or a stalled node is, while a test runs a
second job beside it. Unset (always, outside those tests), a crash point is one set lookup.
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


_PLANS = {signal.SIGKILL: _plan(os.environ.get("TOOLKIT_CRASH_AT", "")),
          signal.SIGSTOP: _plan(os.environ.get("TOOLKIT_STOP_AT", ""))}
_POINTS = frozenset(name for plan in _PLANS.values() for name in plan)
_hits: Counter = Counter()


def crash_point(name: str) -> None:
    if name in _POINTS:
        _hits[name] += 1
        for sig, plan in _PLANS.items():
            if plan.get(name) == _hits[name]:
                os.kill(os.getpid(), sig)
