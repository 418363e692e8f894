"""``toolkit distill``: a small student trained on the gold pairs plus many silver pairs that a
stronger teacher scores (Augmented SBERT), chosen on gold dev only: the accuracy of a large model at
the speed of a small one.

    FOLDER/silver-KEY.parquet (+ .json)  sampled pairs and the teacher's scores, named by what made them
                                         (teacher files, gold pairs, sampling settings): a rerun reads them
    FOLDER/data/train-KEY.parquet        the student's training pairs: gold, then silver (column origin)
    FOLDER/data/dev-KEY.parquet          the gold dev pairs (the dev file's, or the share held out of --train)
    FOLDER/student/                      the student: a run directory like any other (eval, export, score, wise)
    FOLDER/distill.json                  teacher, silver counts and score spread, student (and teacher) metrics
    FOLDER/distill.png                   gold and silver score distributions: does silver cover the range?

Rerunning the same command continues the student from its last checkpoint (or leaves it, finished),
as ``train --resume-if-exists`` does; other settings are refused unless ``--overwrite``.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import numpy as np

from toolkit.common.atomic_io import atomic_path, write_json
from toolkit.common.errors import ToolkitError, show_path
from toolkit.common.option_types import Bounds, Count, Share, check_options
from toolkit.common.progress import progress_bar
from toolkit.distill.silver import (SilverPairs, SilverSettings, distinct_sentences, nearest_neighbours,
                                    read_silver, sample_pairs, silver_key, write_silver)
from toolkit.model.config import ModelConfig
from toolkit.scoring.metrics import evaluate_predictions
from toolkit.sources import PairChunk, SourceOptions, read_pairs
from toolkit.training.config import TrainConfig
from toolkit.training.run_data import DataConfig, dev_digest, read_run_data

Say = Callable[[str], None]
SUMMARY, PLOT, STUDENT, DATA = "distill.json", "distill.png", "student", "data"


@dataclass
class DistillConfig:
    """The teacher and the silver pairs it scores; the student is the model and training options given."""

    teacher: Optional[str] = None  # the teacher, no default: a run, merged folder or ONNX bundle (bi, cross, any base)
    silver_pairs: Count = 10000  # pairs sampled among the training sentences and scored by the teacher
    neighbour_share: Share = 0.5
    """share of the silver pairs that pair a sentence with a near neighbour (under the teacher's embeddings; a
    cross-encoder teacher: the student's starting model's); the rest are random pairs"""
    neighbours: Count = 3  # each sentence's nearest neighbours that it may be paired with
    silver_share: Optional[Annotated[float, Bounds(0, 1, low_open=True)]] = None
    """share of the student's training pairs that are silver (a random subset of them); default: every silver pair"""
    sample_seed: int = 0  # the seed that samples the silver pairs
    teacher_batch_size: Count = 128  # pairs (cross) or sentences (bi) per teacher forward

    def validate(self) -> None:
        check_options(self)
        if not self.teacher:
            raise ToolkitError("name the teacher: --teacher RUN (a run directory, merged folder or ONNX bundle)")


def distill(out: str | Path, data: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, dcfg: DistillConfig,
            test: Optional[str] = None, overwrite: bool = False, progress: bool = True,
            say: Say = lambda line: None) -> dict:
    """Silver pairs scored by the teacher (or read back), then the student trained on gold + silver and
    selected on gold dev; with ``test``, student and teacher scored on it. Returns distill.json's content."""
    from toolkit.artifacts.open_model import load_model, model_files, trained_reading
    from toolkit.training.loop import train

    out = Path(out)
    for c in (model_cfg, cfg, data, dcfg):
        c.validate()
    data = data.absolute()
    ours = (out / STUDENT).exists() or any(out.glob("silver-*.parquet"))  # a distillation folder (labels kept)
    if out.exists() and any(out.iterdir()) and not ours and not overwrite:
        raise ToolkitError(f"{out}: already exists and holds no distillation; choose another --out or pass "
                           "--overwrite")
    gold = read_run_data(data, say)
    teacher_range = trained_reading(dcfg.teacher)[1]
    score_range = gold.train_source.score_range or teacher_range
    if teacher_range and score_range and tuple(teacher_range) != tuple(score_range):
        raise ToolkitError(f"the teacher scores on {teacher_range[0]:g}..{teacher_range[1]:g}, the gold pairs are on "
                           f"{score_range[0]:g}..{score_range[1]:g}: train the teacher on this scale")
    teacher = load_model(dcfg.teacher).predictor(batch_size=dcfg.teacher_batch_size)
    say(f"teacher {show_path(Path(dcfg.teacher))} ({teacher.arch}-encoder); gold {gold.describe()}")
    out.mkdir(parents=True, exist_ok=True)
    silver, key = _silver(out, gold.train, teacher, model_cfg, dcfg, model_files(dcfg.teacher), score_range, say,
                          progress)
    used = len(silver) if dcfg.silver_share is None else \
        min(len(silver), round(dcfg.silver_share / (1 - dcfg.silver_share) * len(gold.train)))
    student_data = _student_data(out, gold.train, gold.dev, silver, used, key, score_range)
    say(f"student: {len(gold.train)} gold + {used} silver training pairs, selected on {len(gold.dev)} gold dev pairs")
    result = train(out / STUDENT, student_data, model_cfg, cfg, overwrite=overwrite, resume_if_exists=not overwrite,
                   progress=progress)
    summary = {"teacher": {"path": str(Path(dcfg.teacher).resolve()), "arch": teacher.arch},
               "silver": _silver_summary(silver, used, key, gold.train.scores, score_range),
               "student": {"run": str(out / STUDENT), "dev": result.summary.get("dev"),
                           "params": result.summary.get("params")}}
    if test:
        summary.update(_tested(test, data.source, score_range, out / STUDENT, teacher, summary, say))
    _plot(out / PLOT, gold.train.scores, silver, used, score_range)
    write_json(out / SUMMARY, summary)
    return summary


def _silver(out: Path, gold: PairChunk, teacher, model_cfg: ModelConfig, dcfg: DistillConfig, teacher_files: dict,
            score_range, say: Say, progress: bool) -> tuple[SilverPairs, str]:
    sampler = "teacher" if teacher.arch == "bi" else f"student start ({model_cfg.base_model})"
    settings = SilverSettings(dcfg.silver_pairs, dcfg.neighbour_share, dcfg.neighbours, dcfg.sample_seed, sampler)
    key, made_of = silver_key(teacher_files, gold, settings)
    path = out / f"silver-{key}.parquet"
    kept = read_silver(path, made_of)
    if kept is not None:
        say(f"silver: {len(kept)} pairs read back from {show_path(path)} (same teacher, gold pairs and settings)")
        return kept, key
    sentences = distinct_sentences(gold)
    if len(sentences) < 3:
        raise ToolkitError(f"the gold training pairs hold {len(sentences)} distinct sentences: too few to pair")
    embedder = teacher if teacher.arch == "bi" else _start_embedder(model_cfg, dcfg.teacher_batch_size)
    embeddings = _in_steps(embedder.embed, sentences, "embedding the training sentences", progress) \
        if dcfg.neighbour_share > 0 or teacher.arch == "bi" else None
    neighbours = nearest_neighbours(embeddings, dcfg.neighbours) if dcfg.neighbour_share > 0 else None
    first, second, origin = sample_pairs(sentences, gold, dcfg.silver_pairs, dcfg.neighbour_share, neighbours,
                                         dcfg.sample_seed)
    if teacher.arch == "bi":  # each sentence embedded once, whatever the number of pairs it is in
        scores = teacher.score_embedded(embeddings, first, second)
    else:
        s1, s2 = [sentences[i] for i in first], [sentences[j] for j in second]
        scores = _in_steps(lambda idx: teacher.predict([s1[i] for i in idx], [s2[i] for i in idx]),
                           list(range(len(s1))), "scoring the silver pairs with the teacher", progress)
    if score_range:
        scores = np.clip(scores, *score_range)  # the student's training file refuses scores outside its range
    silver = SilverPairs([sentences[i] for i in first], [sentences[j] for j in second], np.asarray(scores), origin)
    write_silver(path, silver, made_of)
    say(f"silver: {len(silver)} pairs ({origin.count('neighbour')} neighbours, {origin.count('random')} random) "
        f"scored by the teacher, kept in {show_path(path)}")
    return silver, key


def _in_steps(fn: Callable[[list], np.ndarray], items: list, what: str, progress: bool,
              step: int = 4096) -> np.ndarray:
    """``fn`` over ``items`` in steps, with a progress bar (rate and ETA): labelling can take a while."""
    bar = progress_bar(total=len(items), desc=what, unit="item", leave=False, disable=not progress)
    parts = []
    for start in range(0, len(items), step):
        parts.append(np.asarray(fn(items[start:start + step])))
        bar.update(min(step, len(items) - start))
    bar.close()
    return np.concatenate(parts)


def _start_embedder(model_cfg: ModelConfig, batch_size: int):
    """The student's starting model as a bi-encoder (zero-shot): neighbours for a cross-encoder teacher."""
    import torch

    from toolkit.model.batching import PairTokenizer
    from toolkit.model.regressor import PairRegressor
    from toolkit.model.safe_loading import load_tokenizer, resolve_model
    from toolkit.scoring.torch_engine import Predictor

    _, folder = resolve_model(model_cfg.base_model)
    bi = dataclasses.replace(model_cfg, arch="bi", fused_kernel="off", pooling=None, head_activation=None)
    model = PairRegressor.create(bi, folder)
    tokens = PairTokenizer(load_tokenizer(folder, model_cfg.trust_remote_code), "bi", model_cfg.max_length)
    return Predictor(model, tokens, None, batch_size, "cuda" if torch.cuda.is_available() else "cpu")


def _student_data(out: Path, train: PairChunk, dev: PairChunk, silver: SilverPairs, used: int, key: str,
                  score_range) -> DataConfig:
    """The student's training file (gold, then the first ``used`` silver pairs) and dev file (gold), in
    the default columns, named by their content: a run on other data is another run."""
    rows = {"sentence1": [*train.s1, *silver.s1[:used]], "sentence2": [*train.s2, *silver.s2[:used]],
            "score": [*map(float, train.scores), *map(float, silver.scores[:used])],
            "origin": ["gold"] * len(train) + list(silver.origin[:used])}
    digest = hashlib.sha256(f"{key}:{used}:{dev_digest(train)}".encode()).hexdigest()[:16]
    folder = out / DATA
    folder.mkdir(exist_ok=True)
    train_path = _write_pairs(folder / f"train-{digest}.parquet", rows)
    dev_path = _write_pairs(folder / f"dev-{dev_digest(dev)[:16]}.parquet",
                            {"id": dev.ids, "sentence1": dev.s1, "sentence2": dev.s2,
                             "score": list(map(float, dev.scores))})
    source = SourceOptions(score_range=tuple(score_range) if score_range else None)
    return DataConfig(train=str(train_path), dev=str(dev_path), source=source)


def _write_pairs(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():  # named by content: an existing one holds the same pairs
        with atomic_path(path) as tmp:
            pq.write_table(pa.table(columns), tmp)
    return path


def _silver_summary(silver: SilverPairs, used: int, key: str, gold: np.ndarray, score_range) -> dict:
    """Counts, and how the silver scores spread over the range beside the gold ones (fifths of it)."""
    scores = np.asarray(silver.scores[:used])
    origin = silver.origin[:used]
    lo, hi = score_range or (float(min(gold.min(), scores.min(initial=gold.min()))),
                             float(max(gold.max(), scores.max(initial=gold.max()))))
    edges = np.linspace(lo, hi, 6)
    fifths = {name: [round(float(x), 4) for x in np.histogram(v, edges)[0] / max(len(v), 1)]
              for name, v in (("gold", np.asarray(gold)), ("silver", scores))}
    return {"key": key, "pairs": len(silver), "used": used, "neighbour": origin.count("neighbour"),
            "random": origin.count("random"), "score_mean": float(scores.mean()) if used else None,
            "score_std": float(scores.std()) if used else None, "share_per_fifth_of_range": fifths}


def _tested(test: str, source: SourceOptions, score_range, student_dir: Path, teacher, summary: dict,
            say: Say) -> dict:
    from toolkit.training.run_dir import load_run

    options = dataclasses.replace(source, score_range=source.score_range or score_range)
    pairs, _ = read_pairs(test, options, gold=True, purpose="to test on")
    student = load_run(student_dir).predictor()
    found = {}
    for name, model in (("student", student), ("teacher", teacher)):
        metrics, _ = evaluate_predictions(model.predict(pairs.s1, pairs.s2), pairs.scores, pairs.groups)
        found[name] = {**summary[name], "test": metrics}
        say(f"{name} on {show_path(Path(test))}: Spearman {100 * metrics['spearman']:.2f}")
    return found


def _plot(path: Path, gold: np.ndarray, silver: SilverPairs, used: int, score_range) -> None:
    from toolkit.scoring.plots import plot_score_spread

    origin = np.asarray(silver.origin[:used])
    scores = np.asarray(silver.scores[:used])
    plot_score_spread(path, {"gold": np.asarray(gold), "silver, neighbours": scores[origin == "neighbour"],
                             "silver, random": scores[origin == "random"]}, score_range)
