"""Training: one loop, on Accelerate, for one CPU process, one GPU, many GPUs or DeepSpeed ZeRO.

Read top to bottom: settings, data, model, optimiser and schedule, the epoch loop with dev
evaluation, early stopping, best-checkpoint saving and resumable checkpoints, then the summary.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batching import LengthGroupedBatchSampler, PairDataset, PairTokenizer
from .checkpoint import TrainerState, find_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint
from .distributed import gathered, make_accelerator, resolve_precision, zero_stage
from .errors import ToolkitError
from .io_utils import atomic_dir, read_json, write_json, write_text
from .labels import LabelScale
from .loading import load_tokenizer, resolve_model
from .metrics import HIGHER_IS_BETTER, evaluate_predictions, format_metrics, is_better
from .model import ModelConfig, PairRegressor
from .predict import Predictor
from .run import CONFIG, INIT_DIR, INIT_WEIGHTS, METRICS, WEIGHTS_DIR, base_reference, write_config
from .sources import Columns, PairChunk, PairSource, SourceOptions

# Learning rates found on STS-B dev (benchmarks/RESULTS.md): adapters want ~50x full fine-tuning's.
DEFAULT_LR = {"none": 2e-5}
DEFAULT_ADAPTER_LR = 1e-3


@dataclass
class TrainConfig:
    epochs: int = 4
    batch_size: int = 16  # per device
    global_batch_size: Optional[int] = None  # if set: per device = this / (processes x grad_accum)
    grad_accum: int = 1
    lr: Optional[float] = None  # None: DEFAULT_LR for the adapter type
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "auto"  # auto (the accelerate config's, else no) | no | bf16 | fp16
    group_by_length: bool = True
    patience: Optional[int] = 2  # epochs without dev improvement before stopping; None: never
    metric: str = "spearman"
    eval_batch_size: int = 128
    normalize: str = "auto"  # range | zscore | auto (range when a score range is declared)
    save_steps: int = 0  # also checkpoint every N optimiser steps (0: at epoch ends only)
    keep_checkpoint: bool = False  # keep the resumable checkpoint after a finished run
    head_init: str = "random"  # cross-encoders: random | lp (linear probe first: LP-FT, needed by `toolkit wise`)

    def resolved_lr(self, adapter: str) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(adapter, DEFAULT_ADAPTER_LR)

    def validate(self) -> None:
        if min(self.epochs, self.batch_size, self.grad_accum, self.eval_batch_size) < 1:
            raise ToolkitError("--epochs, --batch-size, --grad-accum and --eval-batch-size must be at least 1")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise ToolkitError("--global-batch-size must be at least 1")
        if self.metric not in HIGHER_IS_BETTER:
            raise ToolkitError(f"--metric must be one of {', '.join(HIGHER_IS_BETTER)}")
        if self.precision not in ("auto", "no", "bf16", "fp16"):
            raise ToolkitError("--precision must be auto, no, bf16 or fp16")
        if self.normalize not in ("auto", "range", "zscore"):
            raise ToolkitError("--normalize must be auto, range or zscore")
        if not 0 <= self.warmup_ratio < 1:
            raise ToolkitError("--warmup-ratio must be in [0, 1)")
        if self.lr is not None and not self.lr > 0:
            raise ToolkitError("--lr must be positive")
        if self.save_steps < 0:
            raise ToolkitError("--save-steps must be 0 or more")
        if self.head_init not in ("random", "lp"):
            raise ToolkitError("--head-init must be random or lp")

    def per_device_batch(self, processes: int) -> int:
        if self.global_batch_size is None:
            return self.batch_size
        parts = processes * self.grad_accum
        if self.global_batch_size % parts:
            raise ToolkitError(f"--global-batch-size {self.global_batch_size} is not divisible by {processes} "
                               f"processes x {self.grad_accum} accumulation steps")
        return self.global_batch_size // parts


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

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        source = dict(d["source"])
        source["columns"] = Columns(**source["columns"])
        if source.get("score_range") is not None:
            source["score_range"] = tuple(source["score_range"])
        return cls(d["train"], d["dev"], SourceOptions(**source), d.get("dev_table"), d.get("dev_query"))


@dataclass
class TrainResult:
    """What ``train`` returns: the summary written to metrics.json, the best checkpoint's dev
    predictions, and the model as training left it (unwrapped; its last state, not the best)."""

    summary: dict
    dev_predictions: np.ndarray
    model: Any = None


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

    def rewrite(self, history: list[dict]) -> None:
        """On resume: the records of the checkpoint, without any written after it."""
        if self.enabled:
            write_text(self.folder / "train_log.jsonl", "".join(json.dumps(e) + "\n" for e in history))


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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _align_deepspeed(accelerator, per_device: int, cfg: TrainConfig) -> Optional[dict]:
    """The DeepSpeed config, with our settings where it says "auto"; a fixed value that disagrees
    with them is an error (our config owns batch sizes, accumulation and clipping)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    ds = plugin.deepspeed_config
    ours = {"train_micro_batch_size_per_gpu": per_device, "gradient_accumulation_steps": cfg.grad_accum,
            "train_batch_size": per_device * accelerator.num_processes * cfg.grad_accum,
            "gradient_clipping": cfg.max_grad_norm}
    for key, value in ours.items():
        fixed = ds.get(key, "auto")
        if fixed != "auto" and float(fixed) != float(value):
            raise ToolkitError(f"the DeepSpeed config fixes {key}={fixed}, but the training settings give {value}: "
                               f"set it to \"auto\" (the toolkit's flags own it)")
    ds.update(ours)  # accelerate would fill clipping "auto" with 1.0 and cannot read our batch sampler's size
    if ("optimizer" in ds) != ("scheduler" in ds):
        raise ToolkitError("the DeepSpeed config names an optimizer without a scheduler (or the reverse): "
                           "give both, with \"auto\" values, or neither")
    return ds


def _batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """Dropout's randomness as a function of where training stands, not of what ran before: a run
    resumed mid-epoch draws the same masks as an uninterrupted one (a restored RNG would not, since
    building the data iterator after the restore draws from it), and ranks draw different masks."""
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1, np.uint64)[0])


def train(out: str | Path, data: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig,
          overwrite: bool = False, resume: bool = False) -> TrainResult:
    """Train an adapter (or the full model) and write a self-describing run directory.

    ``resume`` continues ``out`` from its last checkpoint (model, optimiser, scheduler, RNG, step,
    early-stopping state): the result equals an uninterrupted run's.
    """
    from accelerate.utils import DummyOptim, DummyScheduler, set_seed
    from transformers import get_linear_schedule_with_warmup

    # -- settings ---------------------------------------------------------------------------------
    out = Path(out)
    model_cfg.validate()
    cfg.validate()
    precision = resolve_precision(cfg.precision)
    _, base_folder = resolve_model(model_cfg.base_model)  # a wrong model name fails before any data is read
    if not resume and (out / CONFIG).exists() and not overwrite:
        raise ToolkitError(f"{out}: already holds a run; choose another --out, pass --overwrite, or --resume it")
    checkpoint = find_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise ToolkitError(f"{out}: no checkpoint to resume from"
                           + (" (the run finished)" if (out / METRICS).exists() else ""))
    accelerator = make_accelerator(precision, cfg.grad_accum)
    per_device = cfg.per_device_batch(accelerator.num_processes)
    ds_config = _align_deepspeed(accelerator, per_device, cfg)
    main = accelerator.is_main_process
    if main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        remove_checkpoints(out)
        for name in ("train.log", "train_log.jsonl", METRICS):
            (out / name).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
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
    if zero_stage(accelerator) == 3 and model_cfg.fused_kernel != "off":
        if model_cfg.fused_kernel == "on":  # ZeRO-3 gathers weights in module hooks the kernel bypasses
            raise ToolkitError("--fused-kernel on does not work under DeepSpeed ZeRO-3: "
                               "use ZeRO-2 or --fused-kernel off")
        model_cfg = dataclasses.replace(model_cfg, fused_kernel="off")
    base = base_reference(model_cfg)
    model = PairRegressor.create(model_cfg, base_folder)
    tokens = PairTokenizer(load_tokenizer(base_folder, model_cfg.trust_remote_code), model_cfg.arch,
                           model_cfg.max_length)
    probe = None
    if cfg.head_init == "lp" and checkpoint is None:
        from .probe import fit_linear_probe

        model.to(accelerator.device)
        probe = fit_linear_probe(model, tokens, (train_pairs.s1, train_pairs.s2), labels.normalize(train_pairs.scores),
                                 (dev_pairs.s1, dev_pairs.s2), labels.normalize(dev_pairs.scores),
                                 cfg.eval_batch_size, accelerator.device)
    counts = model.parameter_counts()
    lr = cfg.resolved_lr(model_cfg.adapter)
    effective = per_device * accelerator.num_processes * cfg.grad_accum
    if main and not resume:
        write_config(out, model_cfg, labels, base, train={**dataclasses.asdict(cfg), "lr": lr},
                     data=dataclasses.asdict(data),
                     resolved={"score_range": score_range, "columns": dataclasses.asdict(train_src.columns),
                               "train_rows": len(train_pairs), "dev_rows": len(dev_pairs), "precision": precision,
                               "processes": accelerator.num_processes, "per_device_batch": per_device,
                               "effective_batch": effective,
                               "linear_probe": dataclasses.asdict(probe) if probe is not None else None})

    dataset = PairDataset(tokens.encode_pairs(train_pairs.s1, train_pairs.s2), labels.normalize(train_pairs.scores))
    # global batches; each process takes its share (split_batches), see distributed.make_accelerator
    sampler = LengthGroupedBatchSampler(dataset.lengths(), per_device * accelerator.num_processes, cfg.seed,
                                        cfg.group_by_length)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=tokens.collate)

    # -- optimiser and schedule ---------------------------------------------------------------------
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    groups = _param_groups(model, cfg.weight_decay)
    if ds_config is not None and "optimizer" in ds_config:  # DeepSpeed builds them; "auto" filled from ours
        optimizer = DummyOptim(groups, lr=lr, weight_decay=cfg.weight_decay)
        scheduler = DummyScheduler(optimizer, total_num_steps=total_steps, warmup_num_steps=warmup_steps)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    log.say(f"model {base['name']} arch={model_cfg.arch} adapter={model_cfg.adapter}: "
            f"{counts['trainable']:,} of {counts['total']:,} parameters trainable ({counts['percent']:.2f}%)")
    log.say(f"data {len(train_pairs)} train / {len(dev_pairs)} dev pairs; labels {labels.kind} "
            f"(score = {labels.offset:g} + {labels.scale:g} * y)")
    if probe is not None:
        log.say(probe.describe())
    log.say(f"world {accelerator.num_processes} process(es), {accelerator.distributed_type.value.lower()}"
            f"{' ZeRO-' + str(accelerator.state.deepspeed_plugin.zero_stage) if ds_config else ''}, "
            f"device {accelerator.device}, precision {precision}")
    log.say(f"batch {per_device} per device x {accelerator.num_processes} processes x {cfg.grad_accum} "
            f"accumulation = {effective} effective; {steps_per_epoch} steps/epoch; lr {lr:g}")

    predictor = Predictor(unwrapped, tokens, labels, cfg.eval_batch_size, accelerator.device, accelerator)

    def evaluate() -> tuple[np.ndarray, dict, list[str]]:
        with accelerator.autocast():
            pred = predictor.predict(dev_pairs.s1, dev_pairs.s2)
        return (pred, *evaluate_predictions(pred, dev_pairs.scores, dev_pairs.groups, ci=False))

    def save_best() -> None:
        """Adapter (+ head), or all weights: gathered from ZeRO-3 partitions, written by the main process."""
        params = [p for p in unwrapped.parameters() if p.requires_grad or model_cfg.adapter == "none"]
        with gathered(accelerator, params):
            if main:
                with atomic_dir(out / WEIGHTS_DIR) as tmp:
                    unwrapped.save_weights(tmp)
        accelerator.wait_for_everyone()

    def save_init() -> None:
        """The trainable weights as training starts (adapter at its identity init, linear-probe head):
        the α = 0 end of ``toolkit wise``. Full fine-tuning starts from the base model's weights, which
        are not copied: only its head is saved."""
        named = [(n, p) for n, p in unwrapped.named_parameters()
                 if p.requires_grad and (model_cfg.adapter != "none" or ".heads." in n)]
        with gathered(accelerator, [p for _, p in named]):
            if main:
                from safetensors.torch import save_file

                with atomic_dir(out / INIT_DIR) as tmp:
                    save_file({n: p.detach().cpu().contiguous() for n, p in named}, str(tmp / INIT_WEIGHTS),
                              metadata={"head_init": cfg.head_init if model_cfg.arch == "cross" else "none"})
        accelerator.wait_for_everyone()

    # -- state: fresh, or from the last checkpoint ----------------------------------------------------
    if checkpoint is not None:
        state, best_pred = load_checkpoint(accelerator, checkpoint)
        log.rewrite(state.history)
        log.say(f"resumed from {checkpoint.name}: epoch {state.epoch}, batch {state.batches_done}, "
                f"step {state.global_step}")
    else:
        best_pred, dev, _ = evaluate()
        state = TrainerState(best=dev, history=[{"epoch": 0, "dev": dev}])
        save_init()
        save_best()
        log.say(f"epoch 0 (before training) dev {format_metrics(dev)}")
        log.record({"epoch": 0, "dev": dev})

    # -- epochs -----------------------------------------------------------------------------------
    start = time.time()
    bar = tqdm(total=len(loader) * cfg.epochs, initial=(state.epoch - 1) * len(loader) + state.batches_done,
               disable=not main, unit="batch", dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    while not state.finished and state.epoch <= cfg.epochs:
        epoch = state.epoch
        model.train()
        epoch_loader = accelerator.skip_first_batches(loader, state.batches_done) if state.batches_done else loader
        epoch_loader.set_epoch(epoch)  # the batch order depends on (seed, epoch) only; accelerate's
        sampler.set_epoch(epoch)       # skipping wrapper does not pass the epoch on, so set it here too
        bar.set_description(f"epoch {epoch}/{cfg.epochs}")
        epoch_start = time.time()
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                torch.manual_seed(_batch_seed(cfg.seed, epoch, state.batches_done, accelerator.process_index))
                targets = batch.pop("labels")
                pred = model(**batch)
                loss = F.mse_loss(pred.float(), targets.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.epoch_losses.append(accelerator.reduce(loss.detach(), "mean").item())
            state.epoch_seen += len(targets) * accelerator.num_processes
            state.batches_done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(state.epoch_losses[-50:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            refresh=False)
            if accelerator.sync_gradients:
                state.global_step += 1
                if cfg.save_steps and state.global_step % cfg.save_steps == 0:
                    save_checkpoint(accelerator, out, state, best_pred)
        pred, dev, warnings = evaluate()
        for w in warnings:
            log.say(f"warning: dev {w}")
        elapsed = time.time() - epoch_start
        entry = {"epoch": epoch, "train_loss": float(np.mean(state.epoch_losses)), "dev": dev,
                 "seconds": elapsed, "samples_per_s": state.epoch_seen / elapsed}
        state.history.append(entry)
        log.record(entry)
        improved = is_better(cfg.metric, dev[cfg.metric], state.best[cfg.metric])
        log.say(f"epoch {epoch} loss {entry['train_loss']:.4f} dev {format_metrics(dev)}"
                f"{' (best)' if improved else ''} [{elapsed:.0f}s]")
        if improved:
            state.best, state.best_epoch, state.since_best, best_pred = dev, epoch, 0, pred
            save_best()
        else:
            state.since_best += 1
        state.epoch, state.batches_done, state.epoch_losses, state.epoch_seen = epoch + 1, 0, [], 0
        if cfg.patience and state.since_best >= cfg.patience and epoch < cfg.epochs:
            state.finished = True
            log.say(f"early stop: no dev {cfg.metric} gain for {state.since_best} epochs")
        save_checkpoint(accelerator, out, state, best_pred)
    bar.close()

    # -- summary ----------------------------------------------------------------------------------
    best_full, _ = evaluate_predictions(best_pred, dev_pairs.scores, dev_pairs.groups, ci=True)
    summary = {"best_epoch": state.best_epoch, "metric": cfg.metric, "dev": best_full, "history": state.history,
               "params": counts, "train_seconds": time.time() - start,
               "stopped_early": state.finished and state.epoch <= cfg.epochs,
               "processes": accelerator.num_processes, "per_device_batch": per_device,
               "effective_batch_size": effective}
    accelerator.wait_for_everyone()
    if main:
        write_json(out / METRICS, summary)
        if not cfg.keep_checkpoint:
            remove_checkpoints(out)
    accelerator.wait_for_everyone()
    log.say(f"best epoch {state.best_epoch}: dev {format_metrics(best_full)}")
    log.say(f"run saved to {out}")
    return TrainResult(summary, best_pred, unwrapped)


def resume(run_dir: str | Path) -> TrainResult:
    """Continue a run from its last checkpoint, with the settings it was started with."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ToolkitError(f"{run_dir}: not a run directory (no {CONFIG})")
    config = read_json(run_dir / CONFIG)
    try:
        model_cfg = ModelConfig(**config["model"])
        cfg = TrainConfig(**config["train"])
        data = DataConfig.from_dict(config["data"])
    except (KeyError, TypeError) as e:
        raise ToolkitError(f"{run_dir / CONFIG}: cannot resume a run of another version ({e})") from None
    return train(run_dir, data, model_cfg, cfg, resume=True)
