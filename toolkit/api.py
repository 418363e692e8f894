"""The Python API: each command of the CLI as one function a notebook calls, and that the CLI calls.

    import toolkit
    toolkit.train(data="stsb:../shared/data/stsb", out="runs/x", epochs=1)
    model = toolkit.load("runs/x")                 # a run, a merged folder or an ONNX bundle
    model.predict([("A plane is taking off.", "An air plane is taking off.")])   # -> np.ndarray

A function's own parameters are what the command acts on (files, folders); its keyword
``**options`` are the fields of the config dataclasses ``options.option_classes`` names for it (nested ones
included: ``SourceOptions``'s ``Columns``), spelt as there, with their defaults. The same settings can be
passed as config objects (``train_config=TrainConfig(epochs=2)``; keywords override their fields). The CLI
is generated from the same places (cli.py), so each option and default is defined once.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence

from toolkit.common.choices import Provider, Runtime
from toolkit.common.errors import ToolkitError
from toolkit.options import configs

if TYPE_CHECKING:  # imported per command at run time (scoring a bundle imports no torch)
    from toolkit.artifacts.onnx_export import ExportConfig
    from toolkit.batch.config import ScoreConfig
    from toolkit.batch.ray_engine import RayConfig
    from toolkit.model.config import ModelConfig
    from toolkit.robustness.wise import WiseConfig
    from toolkit.sources import SourceOptions
    from toolkit.training.config import TrainConfig
    from toolkit.training.run_data import DataConfig
    from toolkit.distill.distillation import DistillConfig
    from toolkit.training.search import SearchConfig

Say = Optional[Callable[[str], None]]


def _data_path(text: str, split: str) -> str:
    if text.startswith("stsb:"):
        from toolkit.sources import resolve_data_spec

        return str(resolve_data_spec(text)[split])
    return str(text)


def _set_data(data_cfg, data: Optional[str]) -> None:
    """``--data``: stsb:FOLDER gives its train and dev splits; one file is the training file, whose dev
    share is then held out (never the same pairs for both)."""
    if not data:
        return
    if data_cfg.train or data_cfg.dev:
        raise ToolkitError("pass either --data or --train/--dev, not both")
    if data.startswith("stsb:"):
        data_cfg.train, data_cfg.dev = _data_path(data, "train"), _data_path(data, "dev")
    else:
        data_cfg.train = data


def _trained_then_tested(command: str, out: Optional[str], data: Optional[str], test: Optional[str],
                         options: dict, given: dict) -> tuple[list, Optional[str]]:
    """The configs of a command that trains into a folder and then scores a test file: the folder named,
    ``--data`` read, and stsb:FOLDER's test split the test file unless another is given."""
    if not out:
        raise ToolkitError(f"name the {command} folder: --out FOLDER")
    built = configs(command, options, given)
    _set_data(built[2], data)
    if test is None and data and data.startswith("stsb:"):
        test = _data_path(data, "test")
    return built, test


def _as_trained(model: str, source, say: Say, gold: bool = True):
    """``source`` with what the user left out taken from the model's training: its sentence (and score)
    column names, and for gold files its score range; says what was taken."""
    from toolkit.artifacts.open_model import trained_reading

    trained, score_range = trained_reading(model)
    filled, taken = source.columns.filled(trained)
    said = [f"{k.removesuffix('_col')}={v}" for k, v in taken.items() if gold or k != "score_col"]
    if gold and source.score_range is None and score_range is not None:
        source = dataclasses.replace(source, score_range=score_range)
        said.append(f"score range {score_range[0]:g}:{score_range[1]:g}")
    if said:
        (say or _quiet)(f"reading {', '.join(said)} as the model was trained (--s1-col, --s2-col, --score-col, "
                        "--score-range to change)")
    return dataclasses.replace(source, columns=filled)


def _quiet(line: str) -> None:
    pass


def check(file: str, *, gold: bool = True, source_options: Optional[SourceOptions] = None, **options: Any):
    """Validate a pair file; returns the ``CheckResult`` (``ok``, ``lines()``: rows and every problem).

    Args:
        file: pair file (CSV/TSV/JSONL/Parquet/SQLite)
        gold: the file has gold scores (--no-gold: pairs to be scored)
    """
    from toolkit.sources.check import check_file

    (source,) = configs("check", options, {"source_options": source_options})
    return check_file(file, dataclasses.replace(source, need_score=gold))


def train(data: Optional[str] = None, *, out: Optional[str] = None, resume: Optional[str] = None,
          overwrite: bool = False, resume_if_exists: bool = False, progress: bool = True,
          model_config: Optional[ModelConfig] = None, train_config: Optional[TrainConfig] = None,
          data_config: Optional[DataConfig] = None, **options: Any):
    """Train an adapter and regression head; returns the ``TrainResult`` (summary, dev predictions).

    Args:
        data: a pair file (a seeded dev share is held out: --dev-fraction), or stsb:FOLDER (the STS Benchmark
            release: its train and dev splits); or --train FILE [--dev FILE]
        out: run directory to write
        resume: continue this run from its last checkpoint, with the settings it was started with (other options
            are not used)
        overwrite: replace a run already in out
        resume_if_exists: if out already holds this run (same settings), continue it from its last checkpoint, or
            do nothing if it finished; for job schedulers that rerun the same command (SLURM --requeue)
        progress: progress bar with rate and ETA (--quiet: none; the log lines are printed either way)
    """
    if resume:
        from toolkit.training.loop import resume as resume_run

        return resume_run(resume, trust_remote_code=bool(options.get("trust_remote_code")), progress=progress)
    if not out:
        raise ToolkitError("name the run directory: --out RUN (or --resume RUN to continue one)")
    model_cfg, cfg, data_cfg = configs("train", options, {"model_config": model_config, "train_config": train_config,
                                                          "data_config": data_config})
    _set_data(data_cfg, data)
    cfg.validate()
    from toolkit.training.launch_checks import check_launch

    check_launch(cfg.per_device_batch, cfg.grad_accum, cfg.max_grad_norm)  # before the model stack loads
    from toolkit.training.loop import train as train_run

    return train_run(out, data_cfg, model_cfg, cfg, overwrite=overwrite, resume_if_exists=resume_if_exists,
                     progress=progress)


def search(data: Optional[str] = None, *, out: Optional[str] = None, test: Optional[str] = None, say: Say = None,
           progress: bool = True, model_config: Optional[ModelConfig] = None,
           train_config: Optional[TrainConfig] = None, data_config: Optional[DataConfig] = None,
           search_config: Optional[SearchConfig] = None, **options: Any) -> dict:
    """Search learning rate, epochs, adapter size, loss (and a cross-encoder's pooling) on dev with Optuna; re-run
    the best setting with each seed and only then score test. Resumable: the same command continues a killed
    search. Returns what FOLDER/search.json holds.

    Args:
        data: a pair file (a seeded dev share is held out: --dev-fraction), or stsb:FOLDER (its train and dev
            splits; its test split is scored at the end); or --train FILE [--dev FILE]
        out: search folder (study, one run per trial, the seeds' runs, search.json, search.png)
        test: pair file scored by the chosen setting's seed runs, after the choice (default with stsb: its test split)
        progress: each training run's progress bar with rate and ETA (--quiet: none)
    """
    from toolkit.training.search import search as run_search

    (model_cfg, cfg, data_cfg, search_cfg), test = _trained_then_tested("search", out, data, test, options, {
        "model_config": model_config, "train_config": train_config, "data_config": data_config,
        "search_config": search_config})
    data_cfg.validate()
    return run_search(out, data_cfg, model_cfg, cfg, search_cfg, test=test, say=say or _quiet, progress=progress)


def distill(data: Optional[str] = None, *, out: Optional[str] = None, test: Optional[str] = None,
            overwrite: bool = False, say: Say = None, progress: bool = True,
            model_config: Optional[ModelConfig] = None, train_config: Optional[TrainConfig] = None,
            data_config: Optional[DataConfig] = None, distill_config: Optional[DistillConfig] = None,
            **options: Any) -> dict:
    """Distil a teacher into a small student: pairs sampled among the training sentences (random and near
    neighbours) scored by the teacher, the student (the model and training options given) trained on gold +
    silver and chosen on gold dev. Resumable: the same command continues the student, and reads the teacher's
    scores back. Returns what FOLDER/distill.json holds.

    Args:
        data: a pair file (a seeded dev share is held out: --dev-fraction), or stsb:FOLDER (its train and dev
            splits; its test split is scored at the end); or --train FILE [--dev FILE]
        out: distillation folder (silver pairs, the student's data, the student run, distill.json, distill.png)
        test: pair file the student and the teacher are scored on at the end (default with stsb: its test split)
        overwrite: train the student again from the start (silver pairs already scored are still read back)
        progress: progress bars with rate and ETA (--quiet: none)
    """
    from toolkit.distill.distillation import distill as run_distill

    (model_cfg, cfg, data_cfg, distill_cfg), test = _trained_then_tested("distill", out, data, test, options, {
        "model_config": model_config, "train_config": train_config, "data_config": data_config,
        "distill_config": distill_config})
    return run_distill(out, data_cfg, model_cfg, cfg, distill_cfg, test=test, overwrite=overwrite,
                       progress=progress, say=say or _quiet)


def load(path: str | Path, batch_size: int = 128, provider: str = "auto", threads: Optional[int] = None,
         trust_remote_code: bool = False, runtime: Runtime = "auto", say: Say = None):
    """A model ready to score pairs, whatever ``path`` holds (run, merged folder, ONNX bundle):
    ``predict(pairs)`` or ``predict(s1, s2)`` gives scores on the user's scale."""
    from toolkit.artifacts.open_model import load_model

    model = load_model(path, trust_remote_code=trust_remote_code, provider=provider, threads=threads, runtime=runtime,
                       say=say)
    return model.predictor(batch_size=batch_size)


def _open(model: str, provider: str, runtime: str, trust_remote_code: bool, say: Say):
    from toolkit.artifacts.open_model import load_model

    opened = load_model(model, trust_remote_code=trust_remote_code, provider=provider, runtime=runtime, say=say)
    if hasattr(opened, "describe"):
        (say or _quiet)(f"model: {model} on {opened.describe()}")
    return opened


def predict(model: str, sentence1: str, sentence2: str, *, provider: Provider = "auto",
            runtime: Runtime = "auto", trust_remote_code: bool = False, say: Say = None) -> float:
    """The score of one pair.

    Args:
        model: run directory, merged folder or ONNX bundle
        sentence1: first sentence
        sentence2: second sentence
        provider: ONNX Runtime provider for a bundle (auto: CPU for int8, CUDA for fp32/fp16 where it runs)
        runtime: what runs a bundle's graph: onnxruntime, openvino (fp32 bundles; the openvino extra), or auto:
            the fastest that passes the bundle's gate on this machine, measured once and remembered
        trust_remote_code: allow a model folder's own code (auto_map)
    """
    if not sentence1.strip() or not sentence2.strip():
        raise ToolkitError("predict: both sentences must be non-empty")
    opened = _open(model, provider, runtime, trust_remote_code, say)
    return float(opened.predictor().predict([sentence1], [sentence2])[0])


def evaluate(model: str, data: str, *, batch_size: int = 128, json: Optional[str] = None,
             plot: Optional[str] = None, provider: Provider = "auto",
             runtime: Runtime = "auto", trust_remote_code: bool = False, say: Say = None,
             source_options: Optional[SourceOptions] = None, **options: Any) -> dict:
    """Metrics (MSE, RMSE, MAE, Pearson, Spearman with bootstrap intervals, per group) of ``model``
    on a gold pair file; bad rows skipped and metric warnings go to ``say``.

    Args:
        model: run directory, merged folder or ONNX bundle
        data: pair file (or stsb:FOLDER for its test split)
        batch_size: pairs per forward pass
        json: write the metrics here
        plot: write a predicted-vs-gold PNG here
        provider: ONNX Runtime provider for a bundle (auto: CPU for int8, CUDA for fp32/fp16 where it runs)
        runtime: what runs a bundle's graph: onnxruntime, openvino (fp32 bundles; the openvino extra), or auto:
            the fastest that passes the bundle's gate on this machine, measured once and remembered
        trust_remote_code: allow a model folder's own code (auto_map)
    """
    from toolkit.artifacts.evaluate import evaluate_file

    (source,) = configs("evaluate", options, {"source_options": source_options})
    opened = _open(model, provider, runtime, trust_remote_code, say)
    source = _as_trained(model, source, say)
    metrics, warnings, skipped = evaluate_file(opened, _data_path(data, "test"), source, batch_size=batch_size,
                                               json_path=json, plot_path=plot)
    for line in ([skipped] if skipped else []) + [f"warning: {w}" for w in warnings]:
        (say or _quiet)(line)
    return metrics


def merge(run: str, out: str, *, overwrite: bool = False) -> Path:
    """Fold a LoRA/IA3 run into the base weights: a plain transformers model folder; returns it.

    Args:
        run: run directory
        out: merged model directory to write
        overwrite: replace a folder already in out
    """
    from toolkit.artifacts.merge import merge_run

    return merge_run(run, out, overwrite=overwrite)


def export(model: str, out: str, *, format: Literal["onnx", "sentence-transformers"] = "onnx",
           overwrite: bool = False, say: Say = None, export_config: Optional[ExportConfig] = None,
           **options: Any):
    """A verified ONNX bundle of a run or merged folder (returns its metadata), or a folder that
    ``SentenceTransformer``/``CrossEncoder`` loads (returns its path).

    Args:
        model: run directory or merged model directory
        out: folder to write
        format: onnx = ONNX + ONNX Runtime bundle (--onnx); sentence-transformers = a folder
            SentenceTransformer(path) (bi) or CrossEncoder(path) (cross) loads, for LoRA/IA3 runs
            (--sentence-transformers)
        overwrite: replace a folder already in out
    """
    (cfg,) = configs("export", options, {"export_config": export_config})
    if format == "sentence-transformers":
        from toolkit.artifacts.st_export import export_sentence_transformers

        changed = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != f.default]
        if changed:
            raise ToolkitError(f"--sentence-transformers takes no ONNX options (got --{changed[0].replace('_', '-')})")
        return export_sentence_transformers(model, out, overwrite=overwrite, say=say or _quiet)
    if format != "onnx":
        raise ToolkitError(f"format={format!r}: choose 'onnx' or 'sentence-transformers'")
    from toolkit.artifacts.onnx_export import export_onnx

    return export_onnx(model, out, cfg, overwrite=overwrite, say=say or _quiet)


def score(model: str, data: str, out: str, *, engine: Literal["local", "ray"] = "local", say: Say = None,
          score_config: Optional[ScoreConfig] = None, ray_config: Optional[RayConfig] = None,
          source_options: Optional[SourceOptions] = None, **options: Any):
    """Score a pair file of any size into ``out``, exactly once and resumable (a rerun continues);
    returns the ``ScoreSummary``.

    Args:
        model: ONNX bundle or run directory
        data: pair file (CSV/TSV/JSONL/Parquet/SQLite); --engine ray: also a folder of them
        out: output file (.parquet/.csv/.tsv/.jsonl) or folder/ (--engine ray: a folder of Parquet files)
        engine: local = this process; ray = Ray Data on RAY_ADDRESS's cluster or a local Ray
    """
    cfg, ray_cfg, source = configs("score", options, {"score_config": score_config, "ray_config": ray_config,
                                                      "source_options": source_options})
    source = dataclasses.replace(_as_trained(model, source, say, gold=False), need_score=False)
    if engine == "ray":
        from toolkit.batch.ray_engine import score_ray

        return score_ray(str(model), data, out, source, cfg, ray_cfg)
    from toolkit.batch.stream import score_file

    return score_file(str(model), data, out, source, cfg, say=say)


def _eval_set(text: str, role: str, split: str):
    """``[NAME=]PATH`` (``stsb:FOLDER`` takes the split the role reads)."""
    from toolkit.robustness.wise import EvalSet

    name, sep, path = text.partition("=")
    if not sep or not name or "/" in name or name.startswith("stsb:"):
        name, path = "", text
    path = _data_path(path, split)
    return EvalSet(name or Path(path).stem, path, role)


def wise(run: str, out: str, *, id: Optional[str] = None, ood: Sequence[str] = (), test: Sequence[str] = (),
         start: Optional[str] = None, choose: bool = False, overwrite: bool = False, say: Say = None,
         wise_config: Optional[WiseConfig] = None, source_options: Optional[SourceOptions] = None, **options: Any):
    """WiSE-FT: interpolate a run between its start and its trained weights, sweep α on in-distribution
    and shifted sets (results.jsonl, wise.png); with ``choose``, ``out`` becomes a run holding the α
    chosen on the ``id`` set. Returns the ``WiseResult``.

    Args:
        run: run directory (θ1)
        out: folder for results.jsonl and wise.png (with choose: a run)
        id: [NAME=]FILE, in-distribution held-out set; α is chosen on it (default: the run's dev pairs, read
            as training read them; stsb:FOLDER takes its dev split)
        ood: [NAME=]FILE, shifted sets (repeat the flag)
        test: [NAME=]FILE, more in-distribution sets, reported and never used to choose (repeat the flag)
        start: θ0 = another run of the same model and adapter (default: the weights this run's training started
            from)
        choose: save the chosen α as a run in out (rule: best metric on the id set, or on the --choose-on set; within
            tie of it, the smallest α)
        overwrite: replace a folder already in out
    """
    from toolkit.robustness.wise import wise as run_wise

    cfg, source = configs("wise", options, {"wise_config": wise_config, "source_options": source_options})
    source = _as_trained(run, source, say)
    sets = [_eval_set(id, "id", "dev")] if id else []
    sets += [_eval_set(t, "ood", "test") for t in ood] + [_eval_set(t, "test", "test") for t in test]
    return run_wise(run, out, sets, source, cfg, start_dir=start, choose=choose, overwrite=overwrite,
                    say=say or _quiet)


def shift_splits(stsb: str, *, out: str) -> dict[str, dict[str, int]]:
    """Write STS-B genre-shift splits (train on two genres, test on the third); returns the row counts.

    Args:
        stsb: the STS-B release folder
        out: folder for heldout-{captions,news,forum}/
    """
    from toolkit.robustness.genre_shift import write_genre_shift

    return write_genre_shift(stsb, out)
