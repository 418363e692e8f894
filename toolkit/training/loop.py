"""Training: one loop, on Accelerate, for one CPU process, one GPU, many GPUs or DeepSpeed ZeRO.

Read top to bottom: ``train`` decides how the run starts (fresh, resumed, already finished), sets it
up (data, model, optimiser and schedule), then alternates ``_train_epoch`` and ``_end_epoch`` (dev
evaluation, early stopping, a checkpoint that holds the best weights) and writes the summary.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from toolkit.common.atomic_io import atomic_dir, read_json, write_json
from toolkit.common.config_io import from_dict
from toolkit.common.errors import ToolkitError
from toolkit.common.failpoints import crash_point
from toolkit.common.progress import progress_bar
from toolkit.model.adapter_kinds import adapter_kind
from toolkit.model.architectures import architecture
from toolkit.model.batching import LengthGroupedBatchSampler, PairDataset, PairTokenizer
from toolkit.model.label_scale import LabelScale
from toolkit.model.losses import OUTPUT, batch_objective
from toolkit.model.config import ModelConfig
from toolkit.model.regressor import PairRegressor, kernel_report
from toolkit.model.safe_loading import load_tokenizer, resolve_model
from toolkit.scoring.metrics import evaluate_predictions, format_metrics, is_better
from toolkit.scoring.torch_engine import Predictor
from toolkit.sources import PairChunk
from toolkit.training.checkpoint import TrainerState, load_checkpoint, remove_checkpoints, save_checkpoint
from toolkit.training.config import BatchSeen, TrainConfig, TrainResult, config_sections, label_scale, objective_model
from toolkit.training.distributed import (
    gather_with_grad,
    gathered,
    make_accelerator,
    resolve_precision,
    unwrap,
    world,
    zero_stage,
)
from toolkit.training.optimiser import make_optimiser
from toolkit.training.run_data import DataConfig, dev_digest, read_run_data
from toolkit.training.run_dir import (
    CONFIG,
    INIT_DIR,
    INIT_WEIGHTS,
    METRICS,
    base_reference,
    read_run_config,
    write_config,
)
from toolkit.training.run_log import LOG, STEPS_LOG, RunLog, scalars
from toolkit.training.session import Session, how_it_starts


def _batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """Dropout's randomness as a function of where training stands, not of what ran before: a run
    resumed mid-epoch draws the same masks as an uninterrupted one (a restored RNG would not, since
    building the data iterator after the restore draws from it), and ranks draw different masks."""
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1, np.uint64)[0])


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
    kind, checkpoint = how_it_starts(out, sections, world, overwrite, resume, resume_if_exists)
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
    session = _set_up(out, data, model_cfg, cfg, accelerator, precision, per_device, base_folder, sections,
                fresh=kind == "fresh")
    if cfg.log_with:  # under RUN/trackers/ (tensorboard: event files; others: their own stores)
        accelerator.init_trackers("trackers", config=scalars(sections))
    state = _restore(session, checkpoint) if checkpoint is not None else _begin(session)
    session.bar = progress_bar(total=len(session.loader) * cfg.epochs,
                         initial=(state.epoch - 1) * len(session.loader) + state.batches_done,
                         disable=not (session.main and progress), unit="batch")
    start = time.time()
    while not state.finished and state.epoch <= cfg.epochs:
        _train_epoch(session, state, observe)
        _end_epoch(session, state)
    session.bar.close()
    return _finish(session, state, time.time() - start)


def _set_up(out: Path, data: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, accelerator, precision: str,
            per_device: int, base_folder: Path, sections: dict, fresh: bool) -> Session:
    """Data, model (and linear-probe head), config.json, optimiser and schedule, all prepared."""
    from accelerate.utils import set_seed

    main = accelerator.is_main_process
    log = RunLog(out, main)
    set_seed(cfg.seed)
    read = read_run_data(data, log.say)
    train_pairs, dev_pairs, train_src = read.train, read.dev, read.train_source
    labels = label_scale(cfg, model_cfg, train_src.score_range, train_pairs.scores)
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
    optimizer, scheduler, steps_per_epoch = make_optimiser(model, model_cfg, cfg, accelerator, per_device, len(loader))
    prepared, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = unwrap(accelerator, prepared)
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


def _evaluate(session: Session) -> tuple[np.ndarray, dict, list[str]]:
    with session.accelerator.autocast():
        pred = session.predictor.predict(session.dev_pairs.s1, session.dev_pairs.s2)
    return (pred, *evaluate_predictions(pred, session.dev_pairs.scores, session.dev_pairs.groups, ci=False))


def _write_weights(session: Session, folder: Path, atomic: bool = False) -> None:
    """The trained weights (adapter + head, or all of them) into ``folder``: gathered from ZeRO-3
    partitions, written by the main process. Every process must call."""
    full = adapter_kind(session.model_cfg.adapter).full
    params = [p for p in session.unwrapped.parameters() if p.requires_grad or full]
    with gathered(session.accelerator, params):
        if session.main:
            with atomic_dir(folder) if atomic else nullcontext(folder) as target:
                session.unwrapped.save_weights(Path(target))
    session.accelerator.wait_for_everyone()


def _write_init(session: Session) -> None:
    """The trainable weights as training starts (adapter at its identity init, linear-probe head):
    the α = 0 end of ``toolkit wise``. Full fine-tuning starts from the base model's weights, which
    are not copied: only its head is saved."""
    named = [(n, p) for n, p in session.unwrapped.named_parameters()
             if p.requires_grad and (not adapter_kind(session.model_cfg.adapter).full or ".heads." in n)]
    with gathered(session.accelerator, [p for _, p in named]):
        if session.main:
            from safetensors.torch import save_file

            head_init = session.cfg.head_init if architecture(session.model_cfg.arch).has_head else "none"
            with atomic_dir(session.out / INIT_DIR) as tmp:
                save_file({n: p.detach().cpu().contiguous() for n, p in named}, str(tmp / INIT_WEIGHTS),
                          metadata={"head_init": head_init})
    session.accelerator.wait_for_everyone()


def _begin(session: Session) -> TrainerState:
    """Epoch 0: the model before any step, evaluated; its weights are the first best."""
    session.best_pred, dev, _ = _evaluate(session)
    state = TrainerState(best=dev, history=[{"epoch": 0, "dev": dev}])
    _write_init(session)
    _write_weights(session, session.weights_dir, atomic=True)
    session.log.say(f"epoch 0 (before training) dev {format_metrics(dev)}")
    session.log.record({"epoch": 0, "dev": dev})
    _track(session, {"epoch": 0, **scalars(dev, "dev")}, step=0)
    _say_kernel(session)
    return state


def _restore(session: Session, checkpoint: Path) -> TrainerState:
    state, session.best_pred = load_checkpoint(session.accelerator, checkpoint, session.weights_dir)
    session.log.rewrite(state.history, state.steps)
    session.log.say(f"resumed from {checkpoint.name}: epoch {state.epoch}, batch {state.batches_done}, "
              f"step {state.global_step}")
    return state


def _train_epoch(session: Session, state: TrainerState, observe: Optional[Callable[[BatchSeen], None]]) -> None:
    """The epoch in progress, from where it stands: each pair once, at its weight (see the sampler)."""
    acc, cfg, epoch = session.accelerator, session.cfg, state.epoch
    session.model.train()
    loader = acc.skip_first_batches(session.loader, state.batches_done) if state.batches_done else session.loader
    loader.set_epoch(epoch)  # the batch order depends on (seed, epoch) only; accelerate's
    session.sampler.set_epoch(epoch)  # skipping wrapper does not pass the epoch on, so set it here too
    session.bar.set_description(f"epoch {epoch}/{cfg.epochs}")
    session.epoch_start, session.epoch_start_pairs = time.time(), state.epoch_pairs
    step_sum = torch.zeros(2, dtype=torch.float64, device=acc.device)  # this process's loss sum and pairs
    pending: list[torch.Tensor] = []  # per optimiser step, reduced across processes only when logged
    gather = gather_with_grad if acc.num_processes > 1 else None  # rank losses rank the global batch
    for batch in loader:
        with acc.accumulate(session.model):
            torch.manual_seed(_batch_seed(cfg.seed, epoch, state.batches_done, acc.process_index))
            targets, weights, index = batch.pop("labels"), batch.pop("weights"), batch.pop("index")
            predictions = session.model(**batch, output=OUTPUT[cfg.loss]).float()
            objective, logged = batch_objective(cfg.loss, predictions, targets.float(), weights.float(), gather)
            acc.backward(objective * session.loss_scale)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(session.model.parameters(), cfg.max_grad_norm)
            session.optimizer.step()
            session.scheduler.step()
            session.optimizer.zero_grad()
        counted = weights > 0
        step_sum += torch.stack([logged.double(), counted.sum().double()])
        if observe is not None:
            observe(BatchSeen(epoch, state.batches_done, acc.process_index, index[counted].tolist()))
        state.batches_done += 1
        session.bar.update(1)
        if acc.sync_gradients:
            state.global_step += 1
            pending.append(step_sum)
            step_sum = torch.zeros_like(step_sum)
            if state.global_step % cfg.log_steps == 0:
                _log_steps(session, state, pending)
            if cfg.save_steps and state.global_step % cfg.save_steps == 0:
                _log_steps(session, state, pending)
                save_checkpoint(acc, session.out, session.weights_dir, state, session.best_pred, None)
        crash_point("train.batch")  # a kill after a batch (and its checkpoint, if any), for the resume tests
    _log_steps(session, state, pending)


def _log_steps(session: Session, state: TrainerState, pending: list[torch.Tensor]) -> None:
    """One all-reduce for the steps since the last log: their mean loss per pair, all processes."""
    if not pending:
        return
    totals = session.accelerator.reduce(torch.stack(pending), "sum").cpu().tolist()
    pending.clear()
    loss_sum, pairs = sum(t[0] for t in totals), sum(t[1] for t in totals)
    state.epoch_loss_sum += loss_sum
    state.epoch_pairs += int(pairs)
    lr = session.scheduler.get_last_lr()[0]
    entry = {"step": state.global_step, "epoch": state.epoch, "steps": len(totals), "pairs": int(pairs),
             "loss": loss_sum / pairs, "lr": lr}
    state.steps.append(entry)
    session.log.record(entry, STEPS_LOG)
    session.bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
    _track(session, {"train/loss": entry["loss"], "train/lr": lr}, step=state.global_step)


def _end_epoch(session: Session, state: TrainerState) -> None:
    """Dev evaluation, best weights, early stopping, and the checkpoint that records them together."""
    epoch, cfg = state.epoch, session.cfg
    pred, dev, warnings = _evaluate(session)
    for w in warnings:
        session.log.say(f"warning: dev {w}")
    elapsed = time.time() - session.epoch_start
    entry = {"epoch": epoch, "train_loss": state.epoch_loss_sum / max(state.epoch_pairs, 1), "dev": dev,
             "seconds": elapsed, "samples_per_s": (state.epoch_pairs - session.epoch_start_pairs) / elapsed}
    state.history.append(entry)
    session.log.record(entry)
    _track(session, {"train/epoch_loss": entry["train_loss"], "epoch": epoch, **scalars(dev, "dev")},
           step=state.global_step)
    improved = is_better(cfg.metric, dev[cfg.metric], state.best[cfg.metric])
    session.log.say(f"epoch {epoch} loss {entry['train_loss']:.4f} dev {format_metrics(dev)}"
              f"{' (best)' if improved else ''} [{elapsed:.0f}s]")
    _say_kernel(session)
    if improved:
        state.best, state.best_epoch, state.since_best, session.best_pred = dev, epoch, 0, pred
    else:
        state.since_best += 1
    state.epoch, state.batches_done, state.epoch_loss_sum, state.epoch_pairs = epoch + 1, 0, 0.0, 0
    if cfg.patience and state.since_best >= cfg.patience and epoch < cfg.epochs:
        state.finished = True
        session.log.say(f"early stop: no dev {cfg.metric} gain for {state.since_best} epochs")
    save_checkpoint(session.accelerator, session.out, session.weights_dir, state, session.best_pred,
                    (lambda folder: _write_weights(session, folder)) if improved else None)


def _track(session: Session, values: dict, step: int) -> None:
    """To the trackers of ``--log-with``, if any (accelerate logs on the main process only)."""
    if session.cfg.log_with:
        session.accelerator.log(values, step=step)


def _say_kernel(session: Session) -> None:
    """Log each fused-kernel decision once (which path, and why), as the self-check makes it."""
    for line in kernel_report(session.unwrapped)["decisions"]:
        if line not in session.kernel_said:
            session.kernel_said.add(line)
            session.log.say(f"fused kernel: {line}")


def _finish(session: Session, state: TrainerState, seconds: float) -> TrainResult:
    best_full, _ = evaluate_predictions(session.best_pred, session.dev_pairs.scores, session.dev_pairs.groups, ci=True)
    summary = {"best_epoch": state.best_epoch, "metric": session.cfg.metric, "dev": best_full, "history": state.history,
               "train_seconds": seconds, "stopped_early": state.finished and state.epoch <= session.cfg.epochs,
               **session.facts, "fused_kernel": kernel_report(session.unwrapped)}
    session.accelerator.wait_for_everyone()
    if session.main:
        write_json(session.out / METRICS, summary)
        if not session.cfg.keep_checkpoint:
            remove_checkpoints(session.out)
    session.accelerator.wait_for_everyone()
    if session.cfg.log_with:
        session.accelerator.end_training()
    session.log.say(f"best epoch {state.best_epoch}: dev {format_metrics(best_full)}")
    session.log.say(f"run saved to {session.out}")
    return TrainResult(summary, session.best_pred, session.unwrapped)


def resume(run_dir: str | Path, trust_remote_code: bool = False, progress: bool = True) -> TrainResult:
    """Continue a run from its last checkpoint, with the settings it was started with (code
    execution only if the caller allows it: never because the run's own config asks)."""
    run_dir = Path(run_dir)
    config, model_cfg = read_run_config(run_dir, trust_remote_code)
    try:
        cfg = from_dict(TrainConfig, config["train"], str(run_dir / CONFIG))
        data = from_dict(DataConfig, config["data"], str(run_dir / CONFIG))
    except (KeyError, TypeError, ToolkitError) as e:
        raise ToolkitError(f"{run_dir / CONFIG}: cannot resume a run of another version ({e})") from None
    return train(run_dir, data, model_cfg, cfg, resume=True, progress=progress)
