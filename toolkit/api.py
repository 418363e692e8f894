"""The Python API: each command of the CLI as one function a notebook calls.

    import toolkit
    toolkit.train(data="stsb:../shared/data/stsb", out="runs/x", epochs=1)
    model = toolkit.load("runs/x")                 # a run, a merged folder or an ONNX bundle
    model.predict([("A plane is taking off.", "An air plane is taking off.")])   # -> np.ndarray

Keyword options are the fields of the config dataclasses (``ModelConfig``, ``TrainConfig``,
``SourceOptions`` and its ``Columns``, ``ExportConfig``, ``ScoreConfig``, ``WiseConfig``), spelt as
there, with their defaults: each is defined once, in its dataclass, and routed here by name.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import ToolkitError


def _route(options: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """Split keyword options among the dataclasses that define them (the first that has a name
    takes it); an unknown name is refused with the valid ones."""
    names = [{f.name for f in dataclasses.fields(c)} for c in classes]
    routed: list[dict[str, Any]] = [{} for _ in classes]
    for key, value in options.items():
        owner = next((i for i, n in enumerate(names) if key in n), None)
        if owner is None:
            raise ToolkitError(f"unknown option {key!r}; valid: {', '.join(sorted(set().union(*names)))}")
        routed[owner][key] = value
    return routed


def _source_options(source: dict[str, Any], columns: dict[str, Any], **fixed: Any):
    """``SourceOptions`` from routed options (column names as ``s1``/``s2``/``score``/``id``/``group``)."""
    from .sources import Columns, SourceOptions

    return SourceOptions(**{**source, **fixed, "columns": Columns(**columns)})


def _source_classes() -> tuple[type, type]:
    from .sources import Columns, SourceOptions

    return SourceOptions, Columns


def _split_paths(data: Optional[str], train: Optional[str], dev: Optional[str]) -> tuple[str, str]:
    from .sources import resolve_data_spec

    if data and (train or dev):
        raise ToolkitError("pass either data= or train=/dev=, not both")
    if data:
        splits = resolve_data_spec(data)
        return str(splits["train"]), str(splits["dev"])
    if not (train and dev):
        raise ToolkitError("name the data: data='stsb:FOLDER', or train=FILE and dev=FILE")
    return train, dev


def train(data: Optional[str] = None, *, out: str | Path, train: Optional[str] = None, dev: Optional[str] = None,
          overwrite: bool = False, resume_if_exists: bool = False, **options: Any):
    """Train an adapter; returns the ``TrainResult`` (run folder, dev metrics, best epoch).
    ``data="stsb:FOLDER"`` or ``train=FILE, dev=FILE``; any ``ModelConfig``/``TrainConfig``/source option."""
    from .model import ModelConfig
    from .train import DataConfig, TrainConfig, train as train_run

    model_opts, train_opts, data_opts, source, columns = _route(options, ModelConfig, TrainConfig, DataConfig,
                                                                 *_source_classes())
    train_path, dev_path = _split_paths(data, train, dev)
    return train_run(out, DataConfig(train_path, dev_path, _source_options(source, columns), **data_opts),
                     ModelConfig(**model_opts), TrainConfig(**train_opts), overwrite=overwrite,
                     resume_if_exists=resume_if_exists)


def load(path: str | Path, batch_size: int = 128, provider: str = "auto", threads: Optional[int] = None,
         trust_remote_code: bool = False):
    """A model ready to score pairs, whatever ``path`` holds (run, merged folder, ONNX bundle):
    ``predict(pairs)`` or ``predict(s1, s2)`` gives scores on the user's scale."""
    from .load import load_model

    model = load_model(path, trust_remote_code=trust_remote_code, provider=provider, threads=threads)
    return model.predictor(batch_size=batch_size)


def evaluate(model: str | Path, data: str, batch_size: int = 128, **options: Any) -> dict:
    """Metrics (MSE, RMSE, MAE, Pearson, Spearman, per group) of ``model`` on a gold pair file."""
    from .evaluate import evaluate_file
    from .load import load_model

    source, columns = _route(options, *_source_classes())
    metrics, _, _ = evaluate_file(load_model(model), data, _source_options(source, columns), batch_size=batch_size)
    return metrics


def export(model: str | Path, out: str | Path, format: str = "onnx", overwrite: bool = False, **options: Any):
    """A verified ONNX bundle of a run or merged folder (``quantize="int8"``, ``fp16=True``, ...;
    returns its metadata), or with ``format="sentence-transformers"`` a folder that
    ``SentenceTransformer``/``CrossEncoder`` loads (returns its path)."""
    if format == "sentence-transformers":
        from .st_folders import export_sentence_transformers

        if options:
            raise ToolkitError(f"format='sentence-transformers' takes no options (got {', '.join(options)})")
        return export_sentence_transformers(model, out, overwrite=overwrite, log=lambda line: None)
    if format != "onnx":
        raise ToolkitError(f"format={format!r}: choose 'onnx' or 'sentence-transformers'")
    from .export import ExportConfig, export_onnx

    (cfg,) = _route(options, ExportConfig)
    return export_onnx(model, out, ExportConfig(**cfg), overwrite=overwrite, log=lambda line: None)


def score(model: str | Path, data: str, out: str, **options: Any):
    """Score a pair file of any size into ``out`` (exactly once, resumable); returns the summary.
    Options: ``ScoreConfig``'s and the source's (``id="pair_id"``, ``policy="skip"``, ...)."""
    from .score import ScoreConfig, score_file

    cfg, source, columns = _route(options, ScoreConfig, *_source_classes())
    return score_file(str(model), data, out, _source_options(source, columns, need_score=False),
                      ScoreConfig(**{"progress": False, **cfg}))


def wise(run: str | Path, out: str | Path, sets: Sequence[tuple[str, str, str]] = (), choose: bool = False,
         overwrite: bool = False, **options: Any):
    """WiSE-FT: sweep α between the zero-shot and fine-tuned weights over ``sets`` (``(name, path,
    role)``, role ``id``/``ood``/``test``; the run's dev split is the default ``id`` set); with
    ``choose``, ``out`` becomes a run holding the α chosen on the ``id`` set."""
    from .wise import EvalSet, WiseConfig, wise as run_wise

    cfg, source, columns = _route(options, WiseConfig, *_source_classes())
    return run_wise(run, out, [EvalSet(*s) for s in sets], _source_options(source, columns),
                    WiseConfig(**{"progress": False, **cfg}), choose=choose, overwrite=overwrite,
                    say=lambda line: None)
