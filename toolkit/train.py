"""Training: one loop, on Accelerate, for one CPU process, one GPU or many.

Read top to bottom: settings, data, model, optimiser and schedule, the epoch loop with dev
evaluation, early stopping and best-checkpoint saving, then the summary.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batching import LengthGroupedBatchSampler, PairDataset, PairTokenizer
from .errors import ToolkitError
from .io_utils import atomic_dir, write_json
from .labels import LabelScale
from .loading import load_tokenizer, resolve_model
from .metrics import HIGHER_IS_BETTER, evaluate_predictions, format_metrics, is_better
from .model import ModelConfig, PairRegressor
from .predict import Predictor
from .run import CONFIG, METRICS, WEIGHTS_DIR, base_reference, write_config
from .sources import PairChunk, PairSource, SourceOptions

# Learning rates found on STS-B dev (benchmarks/RESULTS.md): adapters want ~50x full fine-tuning's.
DEFAULT_LR = {"none": 2e-5}
DEFAULT_ADAPTER_LR = 1e-3


@dataclass
class TrainConfig:
    epochs: int = 4
    batch_size: int = 16  # per device
    grad_accum: int = 1
    lr: Optional[float] = None  # None: DEFAULT_LR for the adapter type
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "no"  # no | bf16 | fp16 (GPU)
    group_by_length: bool = True
    patience: Optional[int] = 2  # epochs without dev improvement before stopping; None: never
    metric: str = "spearman"
    eval_batch_size: int = 128
    normalize: str = "auto"  # range | zscore | auto (range when a score range is declared)

    def resolved_lr(self, adapter: str) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(adapter, DEFAULT_ADAPTER_LR)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ToolkitError("--epochs, --batch-size and --grad-accum must be at least 1")
        if self.metric not in HIGHER_IS_BETTER:
            raise ToolkitError(f"--metric must be one of {', '.join(HIGHER_IS_BETTER)}")
        if self.precision not in ("no", "bf16", "fp16"):
            raise ToolkitError("--precision must be no, bf16 or fp16")
        if self.normalize not in ("auto", "range", "zscore"):
            raise ToolkitError("--normalize must be auto, range or zscore")
        if not 0 <= self.warmup_ratio < 1:
            raise ToolkitError("--warmup-ratio must be in [0, 1)")
        if self.lr is not None and not self.lr > 0:
            raise ToolkitError("--lr must be positive")


@dataclass
class DataConfig:
    train: str
    dev: str
    source: SourceOptions = field(default_factory=SourceOptions)
    dev_table: Optional[str] = None
    dev_query: Optional[str] = None

    def dev_options(self) -> SourceOptions:
        opts = dataclasses.replace(self.source)
        if self.dev_table or self.dev_query:
            opts.table, opts.query = self.dev_table, self.dev_query
        return opts


@dataclass
class TrainResult:
    """What ``train`` returns: the summary written to metrics.json and the best checkpoint's dev predictions."""

    summary: dict
    dev_predictions: np.ndarray


class RunLog:
    """Per-epoch records: JSON lines for programs, plain lines for people (and the console)."""

    def __init__(self, folder: Path, enabled: bool):
        self.folder = folder
        self.enabled = enabled

    def say(self, line: str) -> None:
        if not self.enabled:
            return
        tqdm.write(line)
        with open(self.folder / "train.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def record(self, entry: dict) -> None:
        if self.enabled:
            with open(self.folder / "train_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")


def _read(path: str, options: SourceOptions, what: str, log: RunLog) -> tuple[PairChunk, PairSource]:
    source = PairSource(path, options)
    pairs = source.read_all()
    if source.report.bad:
        log.say(source.report.summary())
    if len(pairs) == 0:
        raise ToolkitError(f"{path}: no usable {what} pairs")
    return pairs, source


def _label_scale(cfg: TrainConfig, model_cfg: ModelConfig, score_range, train_scores: np.ndarray) -> LabelScale:
    kind = cfg.normalize if cfg.normalize != "auto" else ("range" if score_range else "zscore")
    if model_cfg.arch == "bi" and kind != "range":
        raise ToolkitError("--arch bi maps the cosine onto the score range: declare it with --score-range LOW:HIGH")
    if kind == "range":
        if score_range is None:
            raise ToolkitError("--normalize range needs --score-range LOW:HIGH")
        return LabelScale.from_range(*score_range)
    return LabelScale.from_scores(train_scores)


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def check_precision(precision: str) -> None:
    if precision == "no":
        return
    if not torch.cuda.is_available():
        raise ToolkitError(f"--precision {precision} needs a CUDA GPU; none is available here (use --precision no)")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ToolkitError("--precision bf16: this GPU has no bf16 support (use fp16)")


def train(out: str | Path, data: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig,
          overwrite: bool = False) -> TrainResult:
    """Train an adapter (or the full model) and write a self-describing run directory."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    # -- settings ---------------------------------------------------------------------------------
    out = Path(out)
    model_cfg.validate()
    cfg.validate()
    check_precision(cfg.precision)
    _, base_folder = resolve_model(model_cfg.base_model)  # a wrong model name fails before any data is read
    if (out / CONFIG).exists() and not overwrite:
        raise ToolkitError(f"{out}: already holds a run; choose another --out or pass --overwrite")
    accelerator = Accelerator(mixed_precision=cfg.precision, gradient_accumulation_steps=cfg.grad_accum)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("train.log", "train_log.jsonl", METRICS):
            (out / name).unlink(missing_ok=True)
    log = RunLog(out, main)
    set_seed(cfg.seed)

    # -- data -------------------------------------------------------------------------------------
    train_pairs, train_src = _read(data.train, data.source, "training", log)
    score_range = train_src.score_range
    dev_options = data.dev_options()
    dev_options.score_range = dev_options.score_range or score_range  # dev gold must lie in the trained range
    dev_pairs, _ = _read(data.dev, dev_options, "dev", log)
    labels = _label_scale(cfg, model_cfg, score_range, train_pairs.scores)

    # -- model ------------------------------------------------------------------------------------
    base = base_reference(model_cfg)
    model = PairRegressor.create(model_cfg, base_folder)
    tokens = PairTokenizer(load_tokenizer(base_folder, model_cfg.trust_remote_code), model_cfg.arch,
                           model_cfg.max_length)
    counts = model.parameter_counts()
    lr = cfg.resolved_lr(model_cfg.adapter)
    if main:
        write_config(out, model_cfg, labels, base,
                     train={**dataclasses.asdict(cfg), "lr": lr},
                     data={"train": str(data.train), "dev": str(data.dev), "score_range": score_range,
                           "columns": dataclasses.asdict(train_src.columns),
                           "format": data.source.format, "train_rows": len(train_pairs),
                           "dev_rows": len(dev_pairs)})

    dataset = PairDataset(tokens.encode_pairs(train_pairs.s1, train_pairs.s2), labels.normalize(train_pairs.scores))
    sampler = LengthGroupedBatchSampler(dataset.lengths(), cfg.batch_size, cfg.seed, cfg.group_by_length)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=tokens.collate)

    # -- optimiser and schedule ---------------------------------------------------------------------
    optimizer = _optimizer(model, lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    effective = cfg.batch_size * accelerator.num_processes * cfg.grad_accum
    log.say(f"model {base['name']} arch={model_cfg.arch} adapter={model_cfg.adapter}: "
            f"{counts['trainable']:,} of {counts['total']:,} parameters trainable ({counts['percent']:.2f}%)")
    log.say(f"data {len(train_pairs)} train / {len(dev_pairs)} dev pairs; labels {labels.kind} "
            f"(score = {labels.offset:g} + {labels.scale:g} * y)")
    log.say(f"batch {cfg.batch_size} per device x {accelerator.num_processes} processes x {cfg.grad_accum} "
            f"accumulation = {effective} effective; {steps_per_epoch} steps/epoch; lr {lr:g}; device "
            f"{accelerator.device}")

    predictor = Predictor(accelerator.unwrap_model(model), tokens, labels, cfg.eval_batch_size, accelerator.device)

    def evaluate() -> tuple[np.ndarray, dict, list[str]]:
        pred = predictor.predict(dev_pairs.s1, dev_pairs.s2)
        return (pred, *evaluate_predictions(pred, dev_pairs.scores, dev_pairs.groups, ci=False))

    def save_best() -> None:
        if main:
            with atomic_dir(out / WEIGHTS_DIR) as tmp:
                accelerator.unwrap_model(model).save_weights(tmp)

    # -- epochs -----------------------------------------------------------------------------------
    history: list[dict] = []
    best_pred, dev, _ = evaluate()
    best, best_epoch, since_best = dev, 0, 0
    save_best()
    log.say(f"epoch 0 (before training) dev {format_metrics(dev)}")
    log.record({"epoch": 0, "dev": dev})
    history.append({"epoch": 0, "dev": dev})
    start = time.time()
    bar = tqdm(total=len(loader) * cfg.epochs, disable=not main, unit="batch",
               dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    stopped_early = False
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        sampler.set_epoch(epoch)
        bar.set_description(f"epoch {epoch}/{cfg.epochs}")
        epoch_start, losses, seen = time.time(), [], 0
        for batch in loader:
            with accelerator.accumulate(model):
                labels_t = batch.pop("labels")
                pred = model(**batch)
                loss = F.mse_loss(pred.float(), labels_t.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            losses.append(loss.item())
            seen += len(labels_t)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
        pred, dev, warnings = evaluate()
        for w in warnings:
            log.say(f"warning: dev {w}")
        elapsed = time.time() - epoch_start
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses)), "dev": dev, "seconds": elapsed,
                 "samples_per_s": seen * accelerator.num_processes / elapsed}
        history.append(entry)
        log.record(entry)
        improved = is_better(cfg.metric, dev[cfg.metric], best[cfg.metric])
        log.say(f"epoch {epoch} loss {entry['train_loss']:.4f} dev {format_metrics(dev)}"
                f"{' (best)' if improved else ''} [{elapsed:.0f}s]")
        if improved:
            best, best_epoch, since_best, best_pred = dev, epoch, 0, pred
            save_best()
        else:
            since_best += 1
            if cfg.patience and since_best >= cfg.patience and epoch < cfg.epochs:
                stopped_early = True
                log.say(f"early stop: no dev {cfg.metric} gain for {since_best} epochs")
                break
    bar.close()

    # -- summary ----------------------------------------------------------------------------------
    best_full, _ = evaluate_predictions(best_pred, dev_pairs.scores, dev_pairs.groups, ci=True)
    summary = {"best_epoch": best_epoch, "metric": cfg.metric, "dev": best_full, "history": history,
               "params": counts, "train_seconds": time.time() - start, "stopped_early": stopped_early,
               "effective_batch_size": effective}
    if main:
        write_json(out / METRICS, summary)
    log.say(f"best epoch {best_epoch}: dev {format_metrics(best_full)}")
    log.say(f"run saved to {out}")
    return TrainResult(summary, best_pred)

