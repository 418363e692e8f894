"""One door for every model the toolkit writes: a run directory, a merged folder or an ONNX bundle.

eval, predict and score take any of them; all three answer the same calls (``folder``,
``score_range``, ``predictor(batch_size)`` whose ``predict(s1, s2)`` gives scores on the user's
scale). A bundle is opened without importing torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from toolkit.common.errors import ToolkitError

KINDS = ("run", "merged", "bundle")


def kind_of(path: str | Path) -> str:
    """Which of the toolkit's outputs ``path`` is; one clear line if none."""
    from toolkit.common.atomic_io import read_json
    from toolkit.scoring.onnx_bundle import METADATA

    folder = Path(path)
    if (folder / METADATA).is_file():
        return "bundle"
    config = folder / "config.json"
    if not config.is_file():
        what = "no such folder" if not folder.exists() else f"no {METADATA} or config.json"
        raise ToolkitError(f"{folder}: not a run directory, merged folder or ONNX bundle ({what}); train one with "
                           "`toolkit train`")
    try:
        merged = read_json(config).get("kind") == "merged"
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise ToolkitError(f"{config}: not a toolkit config (unreadable JSON object)") from None
    return "merged" if merged else "run"


def load_model(path: str | Path, trust_remote_code: bool = False, fused_kernel: str = "auto",
               provider: str = "auto", threads: Optional[int] = None, runtime: str = "auto", say=None):
    """A ``Run`` (a run directory, or a merged folder as one) or a ``Bundle``, ready to predict; a bundle
    on ``runtime`` (``say`` hears what auto chose and why)."""
    kind = kind_of(path)
    if kind == "bundle":
        from toolkit.scoring.onnx_bundle import Bundle

        return Bundle.load(path, threads=threads, provider=provider, runtime=runtime, say=say)
    if kind == "merged":
        from toolkit.artifacts.merge import load_merged_run

        return load_merged_run(path)
    from toolkit.training.run_dir import load_run

    return load_run(path, trust_remote_code=trust_remote_code, fused_kernel=fused_kernel)


def trained_reading(path: str | Path) -> tuple[dict[str, str], Optional[tuple[float, float]]]:
    """(the sentence and score column names ``path``'s model was trained with where its training named
    them, its score range): how a new file is read when the user says nothing. From its metadata
    or config alone: nothing is loaded."""
    from toolkit.common.atomic_io import read_json
    from toolkit.scoring.onnx_bundle import METADATA

    folder = Path(path)
    if kind_of(path) == "bundle":
        meta = read_json(folder / METADATA)
        columns, rng = {k: str(v) for k, v in (meta.get("columns") or {}).items() if v}, meta.get("score_range")
    else:
        from toolkit.training.run_data import trained_columns

        config = read_json(folder / "config.json")
        columns, rng = trained_columns(config), (config.get("resolved") or {}).get("score_range")
    return columns, (float(rng[0]), float(rng[1])) if rng else None


def model_files(path: str | Path) -> dict[str, str]:
    """sha256 of every file that makes the model's outputs what they are (a scoring job's
    fingerprint): the bundle's own record, or the config and weights of a run or merged folder."""
    from toolkit.scoring.onnx_bundle import sha256_file

    kind = kind_of(path)
    folder = Path(path)
    if kind == "bundle":
        from toolkit.scoring.onnx_bundle import METADATA

        return {METADATA: sha256_file(folder / METADATA)}
    from toolkit.artifacts.merge import MERGED_MODEL
    from toolkit.training.run_dir import WEIGHTS_DIR

    weights = folder / (MERGED_MODEL if kind == "merged" else WEIGHTS_DIR)
    files = [folder / "config.json", *sorted(p for p in weights.rglob("*") if p.is_file())]
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}
