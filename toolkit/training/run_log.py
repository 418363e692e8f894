"""The run's log: per-epoch records (train_log.jsonl) and per-interval losses (steps.jsonl) for
programs, plain lines (train.log and the console) for people, and flat scalars for trackers."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from toolkit.common.atomic_io import write_text

LOG, STEPS_LOG = "train_log.jsonl", "steps.jsonl"


class RunLog:
    """Per-epoch records (train_log.jsonl) and per-interval training losses (steps.jsonl): JSON
    lines for programs; plain lines for people (train.log and the console)."""

    def __init__(self, folder: Path, enabled: bool):
        self.folder = folder
        self.enabled = enabled

    def say(self, line: str) -> None:
        if not self.enabled:
            return
        tqdm.write(line)
        with open(self.folder / "train.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def record(self, entry: dict, name: str = LOG) -> None:
        if self.enabled:
            with open(self.folder / name, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def rewrite(self, history: list[dict], steps: list[dict]) -> None:
        """On resume: the records of the checkpoint, without any written after it."""
        if self.enabled:
            for name, entries in ((LOG, history), (STEPS_LOG, steps)):
                write_text(self.folder / name, "".join(json.dumps(e) + "\n" for e in entries))


def scalars(tree: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """The numbers and strings of nested settings or metrics, as flat ``a/b`` keys: what trackers
    (TensorBoard's hyperparameters among them) accept."""
    flat: dict = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}".strip("/")
        if isinstance(value, dict):
            flat.update(scalars(value, name))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat
