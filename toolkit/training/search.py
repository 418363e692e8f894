"""``toolkit search``: hyperparameter search on dev only (Optuna's TPE). Trials are training runs in
one folder; the best setting by dev is re-run with several seeds, and only those runs are scored on
test, once the choice is made.

    FOLDER/study.db          Optuna's study (SQLite): what a killed search resumes from
    FOLDER/trials/t-KEY/     one run directory per setting (KEY: a hash of the setting)
    FOLDER/final/seed-S/     the chosen setting, re-run with seed S
    FOLDER/search.json       every trial, the choice, each seed's dev and test metrics (rewritten atomically)
    FOLDER/search.png        dev metric per trial with the best so far; dev metric against learning rate

Our own loop of ``ask``/``tell`` rather than ``study.optimize``, for what Optuna leaves to the caller:
a killed search leaves its trial RUNNING in the study; on resume that trial is marked failed and its
setting asked again, and since a setting's run directory is named by the setting, training resumes
from that run's last checkpoint (or reads it back, finished), so no trial is lost or counted twice.
Each trial's sampler is seeded by the number of trials completed before it, so a resumed search asks
for the settings an uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from toolkit.common.atomic_io import write_json
from toolkit.common.choices import Loss, Pooling
from toolkit.common.errors import ToolkitError
from toolkit.common.failpoints import crash_point
from toolkit.common.option_types import Count, Positive, check_options
from toolkit.model.adapter_kinds import adapter_kind
from toolkit.model.architectures import architecture
from toolkit.model.config import ModelConfig
from toolkit.scoring.metrics import HIGHER_IS_BETTER, evaluate_predictions, mean_std
from toolkit.scoring.plots import plot_search
from toolkit.training.config import TrainConfig, objective_model
from toolkit.training.run_data import DataConfig

STUDY, RESULT, PLOT, TRIALS, FINAL = "study.db", "search.json", "search.png", "trials", "final"


@dataclass
class SearchConfig:
    """What the search varies (everything else is the model and training options given) and how long."""

    trials: Count = 12  # settings to complete, each one training run scored on dev
    lr_min: Positive = 1e-4  # learning rate: sampled log-uniformly from lr_min to lr_max
    lr_max: Positive = 3e-3  # learning rate: the upper end
    epoch_choices: tuple[Count, ...] = (1, 2, 3, 4)  # epochs tried
    reduction_factors: tuple[Positive, ...] = (4.0, 8.0, 16.0, 32.0)  # bottleneck adapters: hidden size / width tried
    lora_ranks: tuple[Count, ...] = (4, 8, 16)  # LoRA ranks tried (alpha = rank)
    losses: tuple[Loss, ...] = ()  # losses tried (default: every loss the architecture trains with)
    poolings: tuple[Pooling, ...] = ("cls", "mean")  # cross-encoders: head inputs tried
    seeds: tuple[int, ...] = (1, 2, 3)  # the chosen setting is re-run with each seed, then scored on test
    sampler_seed: int = 0  # TPE's seed (with the count of completed trials: a resumed search asks the same)

    def validate(self) -> None:
        check_options(self)
        if self.lr_min > self.lr_max:
            raise ToolkitError(f"--lr-min {self.lr_min:g} is above --lr-max {self.lr_max:g}")
        if not self.epoch_choices:
            raise ToolkitError("--epoch-choices: one or more epoch counts")
        if not self.seeds:
            raise ToolkitError("--seeds: at least one seed")

    def sizes(self, adapter: str) -> dict[str, tuple]:
        """The adapter's sizes this search varies (those of its kind, where values are given)."""
        tried = {"reduction_factor": self.reduction_factors, "lora_r": self.lora_ranks}
        return {name: tried[name] for name in adapter_kind(adapter).searched if tried[name]}

    def losses_for(self, arch: str) -> tuple[str, ...]:
        return self.losses or architecture(arch).losses


def suggest(trial, cfg: SearchConfig, model_cfg: ModelConfig) -> dict:
    """One setting: the options of the trial, as ``ModelConfig``/``TrainConfig`` fields."""
    setting = {"lr": trial.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True),
               "epochs": trial.suggest_categorical("epochs", list(cfg.epoch_choices))}
    for name, values in cfg.sizes(model_cfg.adapter).items():
        setting[name] = trial.suggest_categorical(name, list(values))
    losses = cfg.losses_for(model_cfg.arch)
    if len(losses) > 1:
        setting["loss"] = trial.suggest_categorical("loss", list(losses))
    else:
        setting["loss"] = losses[0]
    if architecture(model_cfg.arch).has_head and cfg.poolings:
        setting["pooling"] = trial.suggest_categorical("pooling", list(cfg.poolings))
    return setting


def configs_for(setting: dict, model_cfg: ModelConfig, train_cfg: TrainConfig,
                seed: Optional[int] = None) -> tuple[ModelConfig, TrainConfig]:
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    m = dataclasses.replace(model_cfg, **{k: v for k, v in setting.items() if k in model_fields})
    if "lora_r" in setting:
        m = dataclasses.replace(m, lora_alpha=None)  # alpha = rank: the update's scale stays 1 across ranks
    t = dataclasses.replace(train_cfg, **{k: v for k, v in setting.items() if k not in model_fields})
    if seed is not None:
        t = dataclasses.replace(t, seed=seed)
    return m, t


def setting_key(setting: dict) -> str:
    return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12]


def search(out: str | Path, data: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, cfg: SearchConfig,
           test: Optional[str] = None, say: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Run (or resume) the search in ``out``; returns what ``search.json`` holds. ``progress``: each
    training run's progress bar."""
    import optuna

    cfg.validate()
    model_cfg.validate()
    train_cfg.validate()
    for loss in cfg.losses_for(model_cfg.arch):  # a loss the architecture cannot take fails now, in one line
        objective_model(model_cfg, dataclasses.replace(train_cfg, loss=loss))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ToolkitError(f"{out}: another search is running in this folder") from None
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        metric = train_cfg.metric
        direction = "maximize" if HIGHER_IS_BETTER[metric] else "minimize"
        study = optuna.create_study(study_name="search", storage=f"sqlite:///{out / STUDY}", direction=direction,
                                    load_if_exists=True)
        if study.direction.name.lower() != direction:
            raise ToolkitError(f"{out}: this search was started with another --metric; use another --out")
        if not study.trials:
            _enqueue_given(study, model_cfg, train_cfg, cfg)
        _retry_killed(study, say)
        _run_trials(study, out, data, model_cfg, train_cfg, cfg, say, progress)
        result = _final(study, out, data, model_cfg, train_cfg, cfg, test, say, progress)
        plot_search(out / PLOT, result, metric)
        return result
    finally:
        lock.close()


def _enqueue_given(study, model_cfg: ModelConfig, train_cfg: TrainConfig, cfg: SearchConfig) -> None:
    """The options as given (the current recipe) are the first trial, where they lie in the space:
    the search then reports whether it found better than them."""
    given = {"lr": train_cfg.resolved_lr(model_cfg.adapter), "epochs": train_cfg.epochs, "loss": train_cfg.loss}
    for name, values in cfg.sizes(model_cfg.adapter).items():
        given[name] = type(values[0])(adapter_kind(model_cfg.adapter).size(model_cfg, name))
    if architecture(model_cfg.arch).has_head and cfg.poolings:
        given["pooling"] = model_cfg.pooling or "cls"
    choices = {"epochs": cfg.epoch_choices, "loss": cfg.losses_for(model_cfg.arch),
               "reduction_factor": cfg.reduction_factors, "lora_r": cfg.lora_ranks, "pooling": cfg.poolings}
    inside = cfg.lr_min <= given["lr"] <= cfg.lr_max and all(
        given[k] in choices[k] for k in given if k != "lr")
    if inside:
        study.enqueue_trial({k: v for k, v in given.items() if k != "loss" or len(choices["loss"]) > 1},
                            user_attrs={"given": True})


def _retry_killed(study, say: Callable[[str], None]) -> None:
    """A RUNNING trial in a folder nobody holds was killed: fail it, ask its setting again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        say(f"trial {trial.number} was interrupted: its setting is tried again (its run resumes)")


def _completed(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _run_trials(study, out: Path, data: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
                cfg: SearchConfig, say: Callable[[str], None], progress: bool) -> None:
    import optuna

    from toolkit.training.loop import train  # here, not at the top: `toolkit search --help` needs no torch

    metric, started, done_here = train_cfg.metric, time.time(), 0
    while len(_completed(study)) < cfg.trials:
        completed = len(_completed(study))
        study.sampler = optuna.samplers.TPESampler(seed=cfg.sampler_seed + completed,
                                                   n_startup_trials=max(2, cfg.trials // 3))
        trial = study.ask()
        setting = suggest(trial, cfg, model_cfg)
        folder = out / TRIALS / f"t-{setting_key(setting)}"
        trial.set_user_attr("run", str(folder.relative_to(out)))
        trial.set_user_attr("setting", setting)
        m, t = configs_for(setting, model_cfg, train_cfg)
        try:
            summary = train(folder, data, m, t, resume_if_exists=True, progress=progress).summary
        except ToolkitError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        value = summary["dev"][metric]
        crash_point("search.trained")
        study.tell(trial, value)
        done_here += 1
        best = study.best_trial
        elapsed = time.time() - started
        left = cfg.trials - completed - 1
        say(f"trial {completed + 1}/{cfg.trials} ({_describe(setting)}): dev {metric} {_fmt(value, metric)}; "
            f"best so far {_fmt(best.value, metric)} (trial {best.number}); {elapsed / 60:.1f} min, "
            f"{elapsed / done_here / 60:.1f} min/trial, ETA {left * elapsed / done_here / 60:.0f} min")


def _final(study, out: Path, data: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, cfg: SearchConfig,
           test: Optional[str], say: Callable[[str], None], progress: bool) -> dict:
    """The best setting by dev, re-run per seed; test read only now."""
    from toolkit.sources import read_pairs
    from toolkit.training.loop import train
    from toolkit.training.run_dir import load_run

    metric = train_cfg.metric
    best = study.best_trial
    setting = best.user_attrs["setting"]
    say(f"chosen on dev: trial {best.number} ({_describe(setting)}), dev {metric} {_fmt(best.value, metric)}; "
        f"re-running it with seeds {', '.join(map(str, cfg.seeds))}")
    test_pairs = read_pairs(test, data.source, gold=True, purpose="to test on")[0] if test else None
    if test_pairs is not None and data.source.limit is not None:  # --limit is per file: say it cut the test too
        say(f"test: its first {len(test_pairs.s1)} good rows only (--limit {data.source.limit} applies to every file)")
    runs = []
    for seed in cfg.seeds:
        folder = out / FINAL / f"seed-{seed}"
        m, t = configs_for(setting, model_cfg, train_cfg, seed=seed)
        summary = train(folder, data, m, t, resume_if_exists=True, progress=progress).summary
        row = {"seed": seed, "run": str(folder.relative_to(out)), "dev": summary["dev"],
               "params": summary.get("params")}
        if test_pairs is not None:
            predictor = load_run(folder).predictor()
            row["test"], _ = evaluate_predictions(predictor.predict(test_pairs.s1, test_pairs.s2), test_pairs.scores,
                                                  test_pairs.groups, ci=False)
        runs.append(row)
        say(f"seed {seed}: dev {metric} {_fmt(summary['dev'][metric], metric)}"
            + (f", test {_fmt(row['test'][metric], metric)}" if "test" in row else ""))
    trials = [{"number": tr.number, "state": tr.state.name, "value": tr.value, "setting": tr.user_attrs.get("setting"),
               "run": tr.user_attrs.get("run"), "retry_of": tr.user_attrs.get("retry_of")}
              for tr in study.get_trials(deepcopy=False)]
    result = {"metric": metric, "chosen": {"trial": best.number, "setting": setting, "dev": best.value},
              "trials": trials, "final": runs, "test": test,
              "summary": {split: mean_std([r[split][metric] for r in runs if split in r]) for split in ("dev", "test")
                          if any(split in r for r in runs)}}
    write_json(out / RESULT, result)
    for split, (mean, std) in result["summary"].items():
        say(f"{split} {metric} over {len(runs)} seeds: {_fmt(mean, metric)} ± {_fmt(std, metric)}")
    return result


def _fmt(value: float, metric: str) -> str:
    return f"{100 * value:.2f}" if metric in ("spearman", "pearson") else f"{value:.4f}"


def _describe(setting: dict) -> str:
    return ", ".join(f"{k} {v:.2e}" if k == "lr" else f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in setting.items())
