"""The STS Benchmark folder: ``stsb:DIR`` names its three splits."""
from __future__ import annotations

from pathlib import Path

from toolkit.common.errors import BadInputError

SPLIT_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}


def resolve_data_spec(spec: str) -> dict[str, Path]:
    """``stsb:DIR`` -> {"train": ..., "dev": ..., "test": ...} (each file must exist)."""
    kind, sep, folder = spec.partition(":")
    if not sep or kind != "stsb":
        raise BadInputError(f"--data {spec!r}: expected stsb:FOLDER (the STS Benchmark release folder)")
    root = Path(folder)
    if not root.is_dir():
        raise BadInputError(f"{root}: no such folder (--data {spec})")
    splits = {name: root / file for name, file in SPLIT_FILES.items()}
    for name, path in splits.items():
        if not path.is_file():
            raise BadInputError(f"{path}: missing STS-B {name} split in {root}")
    return splits
