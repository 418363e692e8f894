"""Training: one loop, on Accelerate, for one CPU process, one GPU, many GPUs or DeepSpeed ZeRO.

Read top to bottom: ``train`` decides how the run starts (fresh, resumed, already finished), sets it
up (data, model, optimiser and schedule), then alternates ``_train_epoch`` and ``_end_epoch`` (dev
evaluation, early stopping, a checkpoint that holds the best weights) and writes the summary.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from toolkit.model.batching import LengthGroupedBatchSampler, PairDataset, PairTokenizer
from toolkit.training.checkpoint import TrainerState, find_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint
from toolkit.common.settings_diff import differences, summarize
from toolkit.common.config_io import from_dict
from toolkit.training.distributed import gather_with_grad, gathered, make_accelerator, resolve_precision, world, zero_stage
from toolkit.common.errors import ToolkitError
from toolkit.common.failpoints import crash_point
from toolkit.common.atomic_io import atomic_dir, read_json, write_json, write_text
from toolkit.model.label_scale import LabelScale
from toolkit.model.safe_loading import caller_trust, load_tokenizer, resolve_model
from toolkit.model.losses import OUTPUT, batch_objective
from toolkit.common.choices import CROSS_LOSSES, RANK_LOSSES, Loss, Metric, check_choices
from toolkit.common.progress import progress_bar
from toolkit.scoring.metrics import evaluate_predictions, format_metrics, is_better
from toolkit.model.regressor import ModelConfig, PairRegressor, kernel_report
from toolkit.scoring.torch_engine import Predictor
from toolkit.training.run_dir import CONFIG, INIT_DIR, INIT_WEIGHTS, METRICS, WEIGHTS_DIR, base_reference, write_config
from toolkit.training.run_data import DataConfig, dev_digest, read_run_data
from toolkit.sources import PairChunk

# Learning rates found on STS-B dev (benchmarks/RESULTS.md): adapters want ~50x full fine-tuning's.
DEFAULT_LR = {"none": 2e-5}
DEFAULT_ADAPTER_LR = 1e-3
LOG, STEPS_LOG = "train_log.jsonl", "steps.jsonl"


@dataclass
class TrainConfig:
    """How to train; saved in the run directory (a rerun with other settings is refused)."""

    epochs: int = 4  # passes over the training file
    batch_size: int = 16  # pairs per device and step
    global_batch_size: Optional[int] = None
    """effective batch; per device = this / (processes x accumulation), which must divide it"""
    grad_accum: int = 1  # gradient accumulation steps
    lr: Optional[float] = None  # learning rate (default: 1e-3 for adapters, 2e-5 for full fine-tuning)
    weight_decay: float = 0.01  # AdamW weight decay (not on biases and norms)
    warmup_ratio: float = 0.1  # linear warm-up, as a fraction of the optimiser steps
    max_grad_norm: float = 1.0  # gradient clipping
    seed: int = 42  # weights, shuffling and dropout
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # mixed precision; auto: the accelerate config's, else no
    group_by_length: bool = True  # batches of pairs of similar length (--no-group-by-length: plain shuffled batches)
    patience: int = 2  # early stopping: epochs without a dev improvement; 0 disables
    metric: Metric = "spearman"  # dev metric for model selection
    eval_batch_size: int = 128  # dev evaluation batch
    normalize: Literal["auto", "range", "zscore"] = "auto"  # target scaling (auto: the declared range, else z-score)
    loss: Loss = "mse"
    """mse on the normalised score; bi-encoders also cosent or angle (rank losses: only the order of the scores
    is learnt, so choose by spearman; the cosine is not calibrated to the score scale); cross-encoders also bce
    (on the score scaled to 0..1 by its range; the head then ends in a sigmoid)"""
    save_steps: int = 0  # also checkpoint every N optimiser steps for --resume (0: at epoch ends only)
    keep_checkpoint: bool = False  # keep the resumable checkpoint after the run
    head_init: Literal["random", "lp"] = "random"
    """cross-encoders: lp fits the head on frozen pre-trained features first (LP-FT); `toolkit wise` needs it"""
    log_steps: int = 10  # log the training loss (mean over processes) every N optimiser steps
    log_with: Optional[str] = None
    """also log loss, learning rate and dev metrics to an accelerate tracker: tensorboard (event files under
    RUN/trackers/; the 'tracking' extra), wandb, mlflow, ..."""

    def resolved_lr(self, adapter: str) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(adapter, DEFAULT_ADAPTER_LR)

    def validate(self) -> None:
        check_choices(self)
        if min(self.epochs, self.batch_size, self.grad_accum, self.eval_batch_size) < 1:
            raise ToolkitError("--epochs, --batch-size, --grad-accum and --eval-batch-size must be at least 1")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise ToolkitError("--global-batch-size must be at least 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ToolkitError("--warmup-ratio must be in [0, 1)")
        if self.lr is not None and not self.lr > 0:
            raise ToolkitError("--lr must be positive")
        if self.save_steps < 0:
            raise ToolkitError("--save-steps must be 0 or more")
        if self.log_steps < 1:
            raise ToolkitError("--log-steps must be at least 1")
        if self.log_with:
            _check_tracker(self.log_with)

    def per_device_batch(self, processes: int) -> int:
        if self.global_batch_size is None:
            return self.batch_size
        parts = processes * self.grad_accum
        if self.global_batch_size % parts:
            raise ToolkitError(f"--global-batch-size {self.global_batch_size} is not divisible by {processes} "
                               f"processes x {self.grad_accum} accumulation steps")
        return self.global_batch_size // parts


@dataclass
class TrainResult:
    """What ``train`` returns: the summary written to metrics.json, the best checkpoint's dev
    predictions, and the model as training left it (unwrapped; its last state, not the best).
    A run that had already finished returns its summary only."""

    summary: dict
    dev_predictions: Optional[np.ndarray] = None
    model: Any = None


@dataclass
class BatchSeen:
    """What one process trained on in one batch, for ``train(observe=...)`` (tracing, tests)."""

    epoch: int
    batch: int  # index of the global batch in the epoch
    rank: int
    indices: list[int]  # training pairs (positions among the training pairs, in file order) that counted


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


def objective_model(model_cfg: ModelConfig, cfg: TrainConfig) -> ModelConfig:
    """The loss checked against the architecture; the model config as the loss needs it (saved in
    config.json, so that every later command applies the sigmoid a BCE-trained head ends in)."""
    if cfg.loss in RANK_LOSSES and model_cfg.arch != "bi":
        raise ToolkitError(f"--loss {cfg.loss} ranks a bi-encoder's similarities: cross-encoders train with "
                           f"--loss {' or '.join(CROSS_LOSSES)}")
    if model_cfg.arch != "cross":
        if cfg.loss not in ("mse", *RANK_LOSSES):
            raise ToolkitError(f"--loss {cfg.loss} is for cross-encoders (a bi-encoder's cosine is no logit): "
                               f"use mse, {' or '.join(RANK_LOSSES)}")
        return model_cfg
    if cfg.loss == "bce":
        if model_cfg.head_activation == "identity":
            raise ToolkitError("--loss bce trains the logit of a sigmoid head: drop --head-activation identity")
        model_cfg = dataclasses.replace(model_cfg, head_activation="sigmoid")
    if cfg.head_init == "lp" and model_cfg.head_activation == "sigmoid":
        raise ToolkitError("--head-init lp fits the head's last layer to the score by least squares, which a "
                           "sigmoid head cannot keep: use it with --loss mse and the identity head")
    return model_cfg


def _label_scale(cfg: TrainConfig, model_cfg: ModelConfig, score_range, train_scores: np.ndarray) -> LabelScale:
    kind = cfg.normalize if cfg.normalize != "auto" else ("range" if score_range else "zscore")
    if model_cfg.arch == "bi" and kind != "range":
        raise ToolkitError("--arch bi maps the cosine onto the score range: declare it with --score-range LOW:HIGH")
    if model_cfg.head_activation == "sigmoid" and kind != "range":
        raise ToolkitError("a sigmoid head (--loss bce) predicts the score scaled to 0..1 by its range: declare it "
                           "with --score-range LOW:HIGH (z-scored targets leave 0..1)")
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


def config_sections(model_cfg: ModelConfig, cfg: TrainConfig, data: DataConfig) -> dict:
    """The run's settings as config.json keeps them (and a rerun is compared with)."""
    return {"model": dataclasses.asdict(model_cfg), "train": {**dataclasses.asdict(cfg), "lr": cfg.resolved_lr(
        model_cfg.adapter)}, "data": dataclasses.asdict(data)}


def _check_same_run(out: Path, sections: dict, world: dict) -> None:
    """A rerun continues a run only with the settings it was started with."""
    saved = read_json(out / CONFIG)
    asked = json.loads(json.dumps(sections))
    for name, cls in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):  # added since: default
        if isinstance(saved.get(name), dict):
            saved[name] = json.loads(json.dumps(dataclasses.asdict(from_dict(cls, saved[name], str(out / CONFIG)))))
    diffs = differences({k: saved.get(k) for k in asked}, asked)
    diffs += differences({k: saved.get("resolved", {}).get(k) for k in world}, world, "resolved")
    if diffs:
        raise ToolkitError(f"{out / CONFIG}: this run was started with other settings: {summarize(diffs)}; "
                           "rerun with its settings, or choose another --out (or --overwrite)")


def _start(out: Path, sections: dict, world: dict, overwrite: bool, resume: bool,
           resume_if_exists: bool) -> tuple[str, Optional[Path]]:
    """How this run starts: ("fresh" | "resume" | "finished", checkpoint to resume from)."""
    if resume:
        checkpoint = find_checkpoint(out)
        if checkpoint is None:
            raise ToolkitError(f"{out}: no checkpoint to resume from"
                               + (" (the run finished)" if (out / METRICS).exists() else ""))
        return "resume", checkpoint
    if not (out / CONFIG).exists() or overwrite:
        return "fresh", None
    if not resume_if_exists:
        raise ToolkitError(f"{out}: already holds a run; choose another --out, pass --overwrite, or "
                           "--resume-if-exists to continue it")
    _check_same_run(out, sections, world)
    if (out / METRICS).exists():
        return "finished", None
    checkpoint = find_checkpoint(out)
    return ("resume", checkpoint) if checkpoint is not None else ("fresh", None)


@dataclass
class Session:
    """A run while it trains: what every step needs, built once by ``_set_up``."""

    out: Path
    cfg: TrainConfig
    model_cfg: ModelConfig
    accelerator: Any
    model: Any  # as accelerate prepared it (DDP or DeepSpeed wrapper)
    unwrapped: PairRegressor
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: LengthGroupedBatchSampler
    dev_pairs: PairChunk
    predictor: Predictor
    log: RunLog
    facts: dict  # for metrics.json: parameter counts, processes, batch sizes
    best_pred: Optional[np.ndarray] = None
    bar: Any = None
    epoch_start: float = 0.0
    epoch_start_pairs: int = 0  # the epoch's pairs already trained when its timer started (a resume restores them)
    kernel_said: set = field(default_factory=set)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def weights_dir(self) -> Path:
        return self.out / WEIGHTS_DIR

    @property
    def loss_scale(self) -> float:
        """Undoes DDP's average over processes and accelerate's division by the accumulation steps:
        the weights of LengthGroupedBatchSampler already make each step's loss a mean."""
        return float(self.accelerator.num_processes * self.cfg.grad_accum)


def train(out: str | Path, data: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, overwrite: bool = False,
          resume: bool = False, resume_if_exists: bool = False,
          observe: Optional[Callable[[BatchSeen], None]] = None, progress: bool = True) -> TrainResult:
    """Train an adapter (or the full model) and write a self-describing run directory.

    ``resume`` continues ``out`` from its last checkpoint (model, optimiser, scheduler, RNG, step,
    early-stopping state, best weights): the result equals an uninterrupted run's.
    ``resume_if_exists`` makes a rerun of the same command continue (or, finished, leave) the run
    in ``out``, and refuses one with other settings. ``observe`` sees every batch each process trains;
    ``progress``: the progress bar (the log lines are printed either way).
    """
    out = Path(out)
    model_cfg.validate()
    cfg.validate()
    data.validate()
    data = data.absolute()  # later commands read the run's data from any folder
    model_cfg = objective_model(model_cfg, cfg)
    precision = resolve_precision(cfg.precision)
    _, base_folder = resolve_model(model_cfg.base_model)  # a wrong model name fails before any data is read
    accelerator = make_accelerator(precision, cfg.grad_accum, cfg.log_with, out)
    per_device = cfg.per_device_batch(accelerator.num_processes)
    world = {"processes": accelerator.num_processes,
             "effective_batch": per_device * accelerator.num_processes * cfg.grad_accum}
    sections = config_sections(model_cfg, cfg, data)
    kind, checkpoint = _start(out, sections, world, overwrite, resume, resume_if_exists)
    accelerator.wait_for_everyone()  # every process has looked at the folder before anything changes it
    if kind == "finished":
        if accelerator.is_main_process:
            tqdm.write(f"{out}: this run already finished (see {out / METRICS}); nothing to do")
        return TrainResult(read_json(out / METRICS))
    if kind == "fresh" and accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        remove_checkpoints(out)
        for name in ("train.log", LOG, STEPS_LOG, METRICS):
            (out / name).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    s = _set_up(out, data, model_cfg, cfg, accelerator, precision, per_device, base_folder, sections,
                fresh=kind == "fresh")
    if cfg.log_with:  # under RUN/trackers/ (tensorboard: event files; others: their own stores)
        accelerator.init_trackers("trackers", config=_scalars(sections))
    state = _restore(s, checkpoint) if checkpoint is not None else _begin(s)
    s.bar = progress_bar(total=len(s.loader) * cfg.epochs,
                         initial=(state.epoch - 1) * len(s.loader) + state.batches_done,
                         disable=not (s.main and progress), unit="batch")
    start = time.time()
    while not state.finished and state.epoch <= cfg.epochs:
        _train_epoch(s, state, observe)
        _end_epoch(s, state)
    s.bar.close()
    return _finish(s, state, time.time() - start)


def _set_up(out: Path, data: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, accelerator, precision: str,
            per_device: int, base_folder: Path, sections: dict, fresh: bool) -> Session:
    """Data, model (and linear-probe head), config.json, optimiser and schedule, all prepared."""
    from accelerate.utils import set_seed

    main = accelerator.is_main_process
    log = RunLog(out, main)
    set_seed(cfg.seed)
    read = read_run_data(data, log.say)
    train_pairs, dev_pairs, train_src = read.train, read.dev, read.train_source
    labels = _label_scale(cfg, model_cfg, train_src.score_range, train_pairs.scores)
    model, tokens, probe = _build_model(model_cfg, cfg, accelerator, base_folder, labels, train_pairs, dev_pairs,
                                        fresh)
    counts = model.parameter_counts()
    effective = per_device * accelerator.num_processes * cfg.grad_accum
    facts = {"params": counts, "processes": accelerator.num_processes, "per_device_batch": per_device,
             "effective_batch_size": effective}
    base = base_reference(model_cfg)
    if main and fresh:
        write_config(out, model_cfg, labels, base, train=sections["train"],
                     data=sections["data"],
                     resolved={"score_range": train_src.score_range, "columns": dataclasses.asdict(train_src.columns),
                               "train_rows": len(train_pairs), "dev_rows": len(dev_pairs),
                               "dev_digest": dev_digest(dev_pairs), "precision": precision,
                               "processes": accelerator.num_processes, "per_device_batch": per_device,
                               "effective_batch": effective,
                               "linear_probe": dataclasses.asdict(probe) if probe is not None else None})
    dataset = PairDataset(tokens.encode_pairs(train_pairs.s1, train_pairs.s2), labels.normalize(train_pairs.scores))
    # global batches, each process takes its slice (split_batches: see distributed.make_accelerator)
    sampler = LengthGroupedBatchSampler(dataset.lengths(), per_device * accelerator.num_processes, cfg.seed,
                                        cfg.group_by_length, accumulation=cfg.grad_accum)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=tokens.collate)
    optimizer, scheduler, steps_per_epoch = _optimiser(model, model_cfg, cfg, accelerator, per_device, len(loader))
    prepared, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(prepared)
    log.say(f"model {base['name']} arch={model_cfg.arch} adapter={model_cfg.adapter}: "
            f"{counts['trainable']:,} of {counts['total']:,} parameters trainable ({counts['percent']:.2f}%)")
    log.say(f"data {read.describe()}; labels {labels.kind} "
            f"(score = {labels.offset:g} + {labels.scale:g} * y)")
    if probe is not None:
        log.say(probe.describe())
    log.say(f"fused kernel: {model.kernel_choice[1]}")
    log.say(f"{world(accelerator)}, device {accelerator.device}, "
            f"{'fp32' if precision == 'no' else precision + ' mixed precision'}")
    log.say(f"batch {per_device} per device x {accelerator.num_processes} processes x {cfg.grad_accum} "
            f"accumulation = {effective} effective; {steps_per_epoch} steps/epoch; "
            f"lr {cfg.resolved_lr(model_cfg.adapter):g}")
    predictor = Predictor(unwrapped, tokens, labels, cfg.eval_batch_size, accelerator.device, accelerator)
    return Session(out, cfg, model_cfg, accelerator, prepared, unwrapped, optimizer, scheduler, loader, sampler,
                   dev_pairs, predictor, log, facts)


def _build_model(model_cfg: ModelConfig, cfg: TrainConfig, accelerator, base_folder: Path, labels: LabelScale,
                 train_pairs: PairChunk, dev_pairs: PairChunk, fresh: bool):
    """(model, tokenizer, linear-probe result or None). The config as asked is what config.json
    keeps; ZeRO-3 only changes what is built."""
    build_cfg = model_cfg
    if zero_stage(accelerator) == 3 and model_cfg.fused_kernel != "off":
        if model_cfg.fused_kernel == "on":  # ZeRO-3 gathers weights in module hooks the kernel bypasses
            raise ToolkitError("--fused-kernel on does not work under DeepSpeed ZeRO-3: "
                               "use ZeRO-2 or --fused-kernel off")
        build_cfg = dataclasses.replace(model_cfg, fused_kernel="off")
    model = PairRegressor.create(build_cfg, base_folder)
    tokens = PairTokenizer(load_tokenizer(base_folder, model_cfg.trust_remote_code), model_cfg.arch,
                           model_cfg.max_length)
    probe = None
    if cfg.head_init == "lp" and fresh:
        from toolkit.training.linear_probe import fit_linear_probe

        model.to(accelerator.device)
        probe = fit_linear_probe(model, tokens, (train_pairs.s1, train_pairs.s2), labels.normalize(train_pairs.scores),
                                 (dev_pairs.s1, dev_pairs.s2), labels.normalize(dev_pairs.scores),
                                 cfg.eval_batch_size, accelerator.device)
    return model, tokens, probe


def _optimiser(model: PairRegressor, model_cfg: ModelConfig, cfg: TrainConfig, accelerator, per_device: int,
               batches_per_epoch: int):
    """AdamW with linear warm-up and decay (DeepSpeed's own when its config names them)."""
    from transformers import get_linear_schedule_with_warmup

    ds_config = _align_deepspeed(accelerator, per_device, cfg)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    groups = _param_groups(model, cfg.weight_decay)
    lr = cfg.resolved_lr(model_cfg.adapter)
    if ds_config is not None and "optimizer" in ds_config:  # DeepSpeed builds them; "auto" filled from ours
        from accelerate.utils import DummyOptim, DummyScheduler  # exported only where deepspeed is installed

        optimizer = DummyOptim(groups, lr=lr, weight_decay=cfg.weight_decay)
        return optimizer, DummyScheduler(optimizer, total_num_steps=total_steps,
                                         warmup_num_steps=warmup_steps), steps_per_epoch
    optimizer = torch.optim.AdamW(groups, lr=lr)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps), steps_per_epoch


def _evaluate(s: Session) -> tuple[np.ndarray, dict, list[str]]:
    with s.accelerator.autocast():
        pred = s.predictor.predict(s.dev_pairs.s1, s.dev_pairs.s2)
    return (pred, *evaluate_predictions(pred, s.dev_pairs.scores, s.dev_pairs.groups, ci=False))


def _write_weights(s: Session, folder: Path, atomic: bool = False) -> None:
    """The trained weights (adapter + head, or all of them) into ``folder``: gathered from ZeRO-3
    partitions, written by the main process. Every process must call."""
    params = [p for p in s.unwrapped.parameters() if p.requires_grad or s.model_cfg.adapter == "none"]
    with gathered(s.accelerator, params):
        if s.main:
            with atomic_dir(folder) if atomic else nullcontext(folder) as target:
                s.unwrapped.save_weights(Path(target))
    s.accelerator.wait_for_everyone()


def _write_init(s: Session) -> None:
    """The trainable weights as training starts (adapter at its identity init, linear-probe head):
    the α = 0 end of ``toolkit wise``. Full fine-tuning starts from the base model's weights, which
    are not copied: only its head is saved."""
    named = [(n, p) for n, p in s.unwrapped.named_parameters()
             if p.requires_grad and (s.model_cfg.adapter != "none" or ".heads." in n)]
    with gathered(s.accelerator, [p for _, p in named]):
        if s.main:
            from safetensors.torch import save_file

            head_init = s.cfg.head_init if s.model_cfg.arch == "cross" else "none"
            with atomic_dir(s.out / INIT_DIR) as tmp:
                save_file({n: p.detach().cpu().contiguous() for n, p in named}, str(tmp / INIT_WEIGHTS),
                          metadata={"head_init": head_init})
    s.accelerator.wait_for_everyone()


def _begin(s: Session) -> TrainerState:
    """Epoch 0: the model before any step, evaluated; its weights are the first best."""
    s.best_pred, dev, _ = _evaluate(s)
    state = TrainerState(best=dev, history=[{"epoch": 0, "dev": dev}])
    _write_init(s)
    _write_weights(s, s.weights_dir, atomic=True)
    s.log.say(f"epoch 0 (before training) dev {format_metrics(dev)}")
    s.log.record({"epoch": 0, "dev": dev})
    _track(s, {"epoch": 0, **_scalars(dev, "dev")}, step=0)
    _say_kernel(s)
    return state


def _restore(s: Session, checkpoint: Path) -> TrainerState:
    state, s.best_pred = load_checkpoint(s.accelerator, checkpoint, s.weights_dir)
    s.log.rewrite(state.history, state.steps)
    s.log.say(f"resumed from {checkpoint.name}: epoch {state.epoch}, batch {state.batches_done}, "
              f"step {state.global_step}")
    return state


def _train_epoch(s: Session, state: TrainerState, observe: Optional[Callable[[BatchSeen], None]]) -> None:
    """The epoch in progress, from where it stands: each pair once, at its weight (see the sampler)."""
    acc, cfg, epoch = s.accelerator, s.cfg, state.epoch
    s.model.train()
    loader = acc.skip_first_batches(s.loader, state.batches_done) if state.batches_done else s.loader
    loader.set_epoch(epoch)  # the batch order depends on (seed, epoch) only; accelerate's
    s.sampler.set_epoch(epoch)  # skipping wrapper does not pass the epoch on, so set it here too
    s.bar.set_description(f"epoch {epoch}/{cfg.epochs}")
    s.epoch_start, s.epoch_start_pairs = time.time(), state.epoch_pairs
    step_sum = torch.zeros(2, dtype=torch.float64, device=acc.device)  # this process's loss sum and pairs
    pending: list[torch.Tensor] = []  # per optimiser step, reduced across processes only when logged
    gather = gather_with_grad if acc.num_processes > 1 else None  # rank losses rank the global batch
    for batch in loader:
        with acc.accumulate(s.model):
            torch.manual_seed(_batch_seed(cfg.seed, epoch, state.batches_done, acc.process_index))
            targets, weights, index = batch.pop("labels"), batch.pop("weights"), batch.pop("index")
            predictions = s.model(**batch, output=OUTPUT[cfg.loss]).float()
            objective, logged = batch_objective(cfg.loss, predictions, targets.float(), weights.float(), gather)
            acc.backward(objective * s.loss_scale)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(s.model.parameters(), cfg.max_grad_norm)
            s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad()
        counted = weights > 0
        step_sum += torch.stack([logged.double(), counted.sum().double()])
        if observe is not None:
            observe(BatchSeen(epoch, state.batches_done, acc.process_index, index[counted].tolist()))
        state.batches_done += 1
        s.bar.update(1)
        if acc.sync_gradients:
            state.global_step += 1
            pending.append(step_sum)
            step_sum = torch.zeros_like(step_sum)
            if state.global_step % cfg.log_steps == 0:
                _log_steps(s, state, pending)
            if cfg.save_steps and state.global_step % cfg.save_steps == 0:
                _log_steps(s, state, pending)
                save_checkpoint(acc, s.out, s.weights_dir, state, s.best_pred, None)
        crash_point("train.batch")  # a kill after a batch (and its checkpoint, if any), for the resume tests
    _log_steps(s, state, pending)


def _log_steps(s: Session, state: TrainerState, pending: list[torch.Tensor]) -> None:
    """One all-reduce for the steps since the last log: their mean loss per pair, all processes."""
    if not pending:
        return
    totals = s.accelerator.reduce(torch.stack(pending), "sum").cpu().tolist()
    pending.clear()
    loss_sum, pairs = sum(t[0] for t in totals), sum(t[1] for t in totals)
    state.epoch_loss_sum += loss_sum
    state.epoch_pairs += int(pairs)
    lr = s.scheduler.get_last_lr()[0]
    entry = {"step": state.global_step, "epoch": state.epoch, "steps": len(totals), "pairs": int(pairs),
             "loss": loss_sum / pairs, "lr": lr}
    state.steps.append(entry)
    s.log.record(entry, STEPS_LOG)
    s.bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
    _track(s, {"train/loss": entry["loss"], "train/lr": lr}, step=state.global_step)


def _end_epoch(s: Session, state: TrainerState) -> None:
    """Dev evaluation, best weights, early stopping, and the checkpoint that records them together."""
    epoch, cfg = state.epoch, s.cfg
    pred, dev, warnings = _evaluate(s)
    for w in warnings:
        s.log.say(f"warning: dev {w}")
    elapsed = time.time() - s.epoch_start
    entry = {"epoch": epoch, "train_loss": state.epoch_loss_sum / max(state.epoch_pairs, 1), "dev": dev,
             "seconds": elapsed, "samples_per_s": (state.epoch_pairs - s.epoch_start_pairs) / elapsed}
    state.history.append(entry)
    s.log.record(entry)
    _track(s, {"train/epoch_loss": entry["train_loss"], "epoch": epoch, **_scalars(dev, "dev")},
           step=state.global_step)
    improved = is_better(cfg.metric, dev[cfg.metric], state.best[cfg.metric])
    s.log.say(f"epoch {epoch} loss {entry['train_loss']:.4f} dev {format_metrics(dev)}"
              f"{' (best)' if improved else ''} [{elapsed:.0f}s]")
    _say_kernel(s)
    if improved:
        state.best, state.best_epoch, state.since_best, s.best_pred = dev, epoch, 0, pred
    else:
        state.since_best += 1
    state.epoch, state.batches_done, state.epoch_loss_sum, state.epoch_pairs = epoch + 1, 0, 0.0, 0
    if cfg.patience and state.since_best >= cfg.patience and epoch < cfg.epochs:
        state.finished = True
        s.log.say(f"early stop: no dev {cfg.metric} gain for {state.since_best} epochs")
    save_checkpoint(s.accelerator, s.out, s.weights_dir, state, s.best_pred,
                    (lambda folder: _write_weights(s, folder)) if improved else None)


def _track(s: Session, values: dict, step: int) -> None:
    """To the trackers of ``--log-with``, if any (accelerate logs on the main process only)."""
    if s.cfg.log_with:
        s.accelerator.log(values, step=step)


def _say_kernel(s: Session) -> None:
    """Log each fused-kernel decision once (which path, and why), as the self-check makes it."""
    for line in kernel_report(s.unwrapped)["decisions"]:
        if line not in s.kernel_said:
            s.kernel_said.add(line)
            s.log.say(f"fused kernel: {line}")


def _finish(s: Session, state: TrainerState, seconds: float) -> TrainResult:
    best_full, _ = evaluate_predictions(s.best_pred, s.dev_pairs.scores, s.dev_pairs.groups, ci=True)
    summary = {"best_epoch": state.best_epoch, "metric": s.cfg.metric, "dev": best_full, "history": state.history,
               "train_seconds": seconds, "stopped_early": state.finished and state.epoch <= s.cfg.epochs,
               **s.facts, "fused_kernel": kernel_report(s.unwrapped)}
    s.accelerator.wait_for_everyone()
    if s.main:
        write_json(s.out / METRICS, summary)
        if not s.cfg.keep_checkpoint:
            remove_checkpoints(s.out)
    s.accelerator.wait_for_everyone()
    if s.cfg.log_with:
        s.accelerator.end_training()
    s.log.say(f"best epoch {state.best_epoch}: dev {format_metrics(best_full)}")
    s.log.say(f"run saved to {s.out}")
    return TrainResult(summary, s.best_pred, s.unwrapped)


def _check_tracker(name: str) -> None:
    """accelerate drops a tracker whose package is missing without a word: refuse it instead."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType if t.value != "all"]
    if name not in known:
        raise ToolkitError(f"--log-with {name}: not a tracker accelerate knows; choose one of {', '.join(known)}")
    if LoggerType(name) not in get_available_trackers():
        hint = " (pip install tensorboardX, or the toolkit's 'tracking' extra)" if name == "tensorboard" else ""
        raise ToolkitError(f"--log-with {name}: its package is not installed{hint}")


def _scalars(tree: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """The numbers and strings of nested settings or metrics, as flat ``a/b`` keys: what trackers
    (TensorBoard's hyperparameters among them) accept."""
    flat: dict = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}".strip("/")
        if isinstance(value, dict):
            flat.update(_scalars(value, name))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


def resume(run_dir: str | Path, trust_remote_code: bool = False, progress: bool = True) -> TrainResult:
    """Continue a run from its last checkpoint, with the settings it was started with (code
    execution only if the caller allows it: never because the run's own config asks)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ToolkitError(f"{run_dir}: not a run directory (no {CONFIG})")
    config = read_json(run_dir / CONFIG)
    try:
        model_cfg = from_dict(ModelConfig, config["model"], str(run_dir / CONFIG))
        cfg = from_dict(TrainConfig, config["train"], str(run_dir / CONFIG))
        data = from_dict(DataConfig, config["data"], str(run_dir / CONFIG))
    except (KeyError, TypeError, ToolkitError) as e:
        raise ToolkitError(f"{run_dir / CONFIG}: cannot resume a run of another version ({e})") from None
    model_cfg.trust_remote_code = caller_trust(run_dir / CONFIG, config["model"], trust_remote_code)
    return train(run_dir, data, model_cfg, cfg, resume=True, progress=progress)
