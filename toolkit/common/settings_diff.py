"""Where two nested settings differ, said in a line: a rerun that does not match what it would
continue names what changed."""
from __future__ import annotations

from typing import Any

from toolkit.common.errors import show


def differences(before: Any, now: Any, path: str = "") -> list[str]:
    """``key.path (then: X, now: Y)`` for every leaf that differs, values escaped and shortened."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [d for k in dict.fromkeys([*before, *now])
                for d in differences(before.get(k), now.get(k), f"{path}.{k}" if path else str(k))]
    return [] if before == now else [f"{path} (then: {show(before, 40)}, now: {show(now, 40)})"]


def summarize(diffs: list[str], shown: int = 2) -> str:
    more = f" and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return "; ".join(diffs[:shown]) + more
