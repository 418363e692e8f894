"""WiSE-FT (Wortsman et al., 2022) for adapters: θ(α) = (1 − α)·θ0 + α·θ1, swept, measured, chosen.

θ1 is a trained run; θ0 is where its training started (``init/`` in the run directory), or another
run of the same model and adapter (``start``). Per adapter type, from the run's own start:

- bottleneck adapters (seq_bn, double_seq_bn, par_bn) and IA3: every trainable weight is
  interpolated. The bottleneck starts as the identity (up-projection zero) and IA3 at scales of one,
  so α = 0 is the pre-trained model, and for IA3 the merged weights are exactly linear in α;
- LoRA: B·A is scaled, θ0 + α·ΔW exactly — B (zero at the start) is interpolated, A kept trained;
  interpolating A too would make the update quadratic in α;
- full fine-tuning: every encoder weight, from the base model's.

The cross-encoder's head interpolates from its linear probe (``--head-init lp``, see training/linear_probe.py): with
``--arch bi`` α = 0 is exactly the zero-shot model, with ``--arch cross`` it is the linear probe on the
frozen pre-trained model.

Beside the weight-space sweep, the paper's output-space baseline is reported on the same α grid: the
two endpoints' scores mixed, (1 − α)·f(θ0) + α·f(θ1) (an ensemble: two forward passes per pair, so it
is reported, not saved as a model). α is chosen on the in-distribution held-out set, or on a set named
by ``choose_on`` (a held-out genre's dev split, say), and the result says which.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from toolkit.common.atomic_io import atomic_dir, atomic_path, refuse_existing, write_json
from toolkit.common.choices import Metric
from toolkit.common.errors import ToolkitError
from toolkit.common.option_types import Alphas, Count, NonNegative, check_options
from toolkit.model.adapter_kinds import adapter_kind
from toolkit.model.architectures import architecture
from toolkit.model.regressor import PairRegressor
from toolkit.scoring.metrics import HIGHER_IS_BETTER, evaluate_predictions, format_metrics
from toolkit.sources import PairChunk, SourceOptions, read_pairs
from toolkit.training.run_data import recorded_dev
from toolkit.training.run_dir import CONFIG, INIT_DIR, INIT_WEIGHTS, METRICS, WEIGHTS_DIR, Run, load_run

RESULTS = "results.jsonl"
PLOT = "wise.png"
# what must agree for two runs to be points of one weight space
_SAME_MODEL = ("arch", "adapter", "reduction_factor", "lora_r", "lora_alpha", "head_layers", "pooling",
               "head_activation")


@dataclass
class EvalSet:
    name: str
    path: str
    role: str  # id: held-out in-distribution (chooses α); ood: shifted; test: in-distribution, reported only
    pairs: Optional[PairChunk] = None  # already read (the run's own dev pairs); else read from ``path``


@dataclass
class WiseConfig:
    """The α sweep and the rule that chooses α."""

    alphas: Alphas = field(default_factory=lambda: [round(0.05 * i, 10) for i in range(21)])
    """α values: START:STOP:STEP (stop included) or a list A,B,C"""
    metric: Metric = "spearman"  # the metric α is chosen by
    tie: NonNegative = 0.001
    """metric difference counted as a tie; ties go to the smaller α (0.001 = 0.1 Spearman points)"""
    ensemble: bool = True
    """also report output-space ensembling on the same α grid: (1 - α)·score(θ0) + α·score(θ1) (no extra model)"""
    choose_on: Optional[str] = None
    """name of the set α is chosen on (default: the in-distribution held-out set, --id); e.g. a held-out genre's dev
    split given with --ood NAME=FILE, which the results then mark as used for the choice"""
    batch_size: Count = 128  # pairs per forward pass
    progress: bool = True  # progress bar with rate and ETA (--quiet: none)

    def validate(self) -> None:
        check_options(self)
        if not self.alphas:
            raise ToolkitError("--alphas: no α values")
        if any(not math.isfinite(a) for a in self.alphas):
            raise ToolkitError("--alphas: values must be finite")


# -- endpoints ---------------------------------------------------------------------------------------
def _trainable(model: PairRegressor) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_compatible(a: Run, b: Run) -> None:
    """Refuse to interpolate runs that are not two points of one weight space, in one line."""
    def refuse(what: str, x, y) -> None:
        raise ToolkitError(f"cannot interpolate {a.folder} and {b.folder}: different {what} ({x} vs {y})")

    ba, bb = a.config["base_model"], b.config["base_model"]
    if ba["weights_sha256"] != bb["weights_sha256"]:
        refuse("base model", f"{ba['name']} {ba['weights_sha256'][:12]}", f"{bb['name']} {bb['weights_sha256'][:12]}")
    ma, mb = a.config["model"], b.config["model"]
    for key in _SAME_MODEL:
        if ma.get(key) != mb.get(key):
            refuse(key.replace("_", " "), ma.get(key), mb.get(key))
    if a.labels.to_dict() != b.labels.to_dict():
        refuse("label scale", a.labels.to_dict(), b.labels.to_dict())
    pa, pb = _trainable(a.model), _trainable(b.model)
    if pa.keys() != pb.keys():
        refuse("trainable weights", f"{len(pa)} tensors", f"{len(pb)} tensors")
    for name, p in pa.items():
        if p.shape != pb[name].shape:
            refuse(f"shape of {name}", tuple(p.shape), tuple(pb[name].shape))


def _start_of(run: Run) -> dict[str, torch.Tensor]:
    """θ0 from the run's ``init/``; for full fine-tuning the encoder's from the base model."""
    from safetensors import safe_open

    path = run.folder / INIT_DIR / INIT_WEIGHTS
    if not path.is_file():
        raise ToolkitError(f"{run.folder}: no {INIT_DIR}/{INIT_WEIGHTS} (the weights training started from); "
                           f"runs trained before `toolkit wise` existed lack it: train the run again")
    with safe_open(str(path), "pt") as f:
        head_init = (f.metadata() or {}).get("head_init", "none")
        start = {name: f.get_tensor(name) for name in f.keys()}
    if architecture(run.model.cfg.arch).has_head and head_init != "lp":
        raise ToolkitError(f"{run.folder}: its head started at random, so α = 0 has no predictor; train the "
                           f"cross-encoder with --head-init lp (linear probe first, LP-FT)")
    params = _trainable(run.model)
    missing = [n for n in params if n not in start]
    if missing and adapter_kind(run.model.cfg.adapter).full:
        from toolkit.model.safe_loading import resolve_model

        _, base_folder = resolve_model(run.config["base_model"]["name"])
        fresh = PairRegressor.create(dataclasses.replace(run.model.cfg, fused_kernel="off"), base_folder)
        base = dict(fresh.named_parameters())
        start.update({n: base[n].detach().clone() for n in missing})
        missing = [n for n in params if n not in start]
    if missing:
        raise ToolkitError(f"{path}: does not match the run (no start value for {missing[0]})")
    for name, p in params.items():
        if start[name].shape != p.shape:
            raise ToolkitError(f"{path}: {name} has shape {tuple(start[name].shape)}, the run {tuple(p.shape)}")
    return start


class Interpolation:
    """Sets a run's model to θ(α) in place."""

    def __init__(self, run: Run, start: Optional[Run] = None):
        self.run = run
        self.params = _trainable(run.model)
        self.end = {n: p.detach().clone() for n, p in self.params.items()}
        if start is None:
            self.start = _start_of(run)
            self.start_name = "init"
        else:
            check_compatible(run, start)
            if not adapter_kind(run.model.cfg.adapter).between_runs:
                raise ToolkitError(f"cannot interpolate two LoRA runs ({start.folder}, {run.folder}): their merged "
                                   "weights' path is no LoRA of the same rank; interpolate each from its own start")
            self.start = {n: p.detach().clone() for n, p in _trainable(start.model).items()}
            self.start_name = str(start.folder)
        self.keep_end = {n for n in self.params if n.endswith(adapter_kind(run.model.cfg.adapter).kept_trained)}
        for name in self.keep_end:
            b = name[:-1] + "B"
            if b in self.start and self.start[b].abs().max() != 0:
                raise ToolkitError(f"{run.folder}: LoRA B does not start at zero ({b}); θ0 + α·ΔW has no LoRA form")

    def same_ends(self) -> bool:
        """θ0 = θ1: the path is one point (fine-tuning never beat its start on dev)."""
        return all(torch.equal(self.start[n].to(p.dtype), self.end[n]) for n, p in self.params.items()
                   if n not in self.keep_end)

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        for name, p in self.params.items():
            if name in self.keep_end:
                p.copy_(self.end[name])
            else:
                p.copy_(torch.lerp(self.start[name].to(p.dtype), self.end[name], float(alpha)))

# -- sweep -------------------------------------------------------------------------------------------
@dataclass
class WiseResult:
    records: list[dict]
    chosen: Optional[float]
    out: Path


def _read_sets(sets: Sequence[EvalSet], options: SourceOptions, run: Run) -> list[tuple[EvalSet, object, str]]:
    read = []
    for s in sets:
        if s.pairs is not None:
            read.append((s, s.pairs, ""))
            continue
        pairs, source = read_pairs(s.path, options, gold=True, score_range=run.score_range, purpose="to evaluate")
        read.append((s, pairs, source.report.summary() if source.report.bad else ""))
    return read


def sweep(run: Run, interpolation: Interpolation, sets: Sequence[EvalSet], options: SourceOptions,
          cfg: WiseConfig, say: Callable[[str], None] = print) -> list[dict]:
    """One record per α per set (``mode`` "weights"), then with ``cfg.ensemble`` one per α per set of
    the endpoints' mixed scores (``mode`` "outputs"): every metric, in α order."""
    from toolkit.common.progress import progress_bar

    data = _read_sets(sets, options, run)
    for _, _, skipped in data:
        if skipped:
            say(skipped)
    predictor = run.predictor(batch_size=cfg.batch_size)
    records, ends = [], {}
    extra = [a for a in (0.0, 1.0) if a not in cfg.alphas] if cfg.ensemble else []
    total = (len(cfg.alphas) + len(extra)) * sum(len(p) for _, p, _ in data)
    with progress_bar(total=total, unit="pair", disable=not cfg.progress) as bar:
        for alpha in [*cfg.alphas, *extra]:
            interpolation.set(alpha)
            for s, pairs, _ in data:
                bar.set_description(f"α={alpha:g} {s.name}")
                pred = predictor.predict(pairs.s1, pairs.s2)
                if alpha in (0.0, 1.0):
                    ends[(alpha, s.name)] = pred
                if alpha not in extra:
                    metrics, _ = evaluate_predictions(pred, pairs.scores, pairs.groups, ci=False)
                    records.append({"alpha": alpha, "mode": "weights", "set": s.name, "role": s.role,
                                    "data": s.path, **metrics})
                bar.update(len(pairs))
    if cfg.ensemble:
        for alpha in cfg.alphas:
            for s, pairs, _ in data:
                mixed = (1 - alpha) * ends[(0.0, s.name)] + alpha * ends[(1.0, s.name)]
                metrics, _ = evaluate_predictions(mixed, pairs.scores, pairs.groups, ci=False)
                records.append({"alpha": alpha, "mode": "outputs", "set": s.name, "role": s.role,
                                "data": s.path, **metrics})
    return records


def choose_alpha(records: list[dict], metric: str = "spearman", tie: float = 0.001, on: Optional[str] = None,
                 mode: str = "weights") -> float:
    """The α with the best metric on the in-distribution held-out set (or the set named ``on``);
    α values within ``tie`` of the best count as tied, and the smallest of them wins (closest to the
    pre-trained model: the robust side). No other set is looked at."""
    id_rows = [r for r in records if r.get("mode", "weights") == mode and r.get(metric) is not None
               and (r["set"] == on if on is not None else r["role"] == "id")]
    if not id_rows:
        if on is not None:
            raise ToolkitError(f"--choose-on {on}: no such evaluation set with a defined {metric} (name a set given "
                               "with --id, --ood or --test)")
        raise ToolkitError(f"--choose needs an in-distribution held-out set (--id) with a defined {metric}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    best = max(sign * r[metric] for r in id_rows)
    return min(r["alpha"] for r in id_rows if sign * r[metric] >= best - tie)


def table(records: list[dict], metric: str = "spearman", chosen: Optional[float] = None) -> str:
    """α down, sets across (weight space, then output-space ensembling where measured): the metric
    (×100 for correlations), chosen α marked."""
    sets = list(dict.fromkeys(r["set"] for r in records))
    modes = list(dict.fromkeys(r.get("mode", "weights") for r in records))
    roles = {r["set"]: r["role"] for r in records}
    by = {(r["alpha"], r.get("mode", "weights"), r["set"]): r.get(metric) for r in records}
    scale = 100.0 if metric in ("spearman", "pearson") else 1.0
    columns = [(m, s) for m in modes for s in sets]
    heads = [f"{s} ({roles[s]}){'' if m == 'weights' else ' ens.'}" for m, s in columns]
    width = max(10, *(len(h) for h in heads))
    lines = [f"{'α':>6}  " + "  ".join(h.rjust(width) for h in heads)]
    for alpha in dict.fromkeys(r["alpha"] for r in records):
        cells = ["n/a".rjust(width) if by[(alpha, m, s)] is None else f"{scale * by[(alpha, m, s)]:.2f}".rjust(width)
                 for m, s in columns]
        mark = "  <- chosen" if chosen is not None and alpha == chosen else ""
        lines.append(f"{alpha:>6g}  " + "  ".join(cells) + mark)
    return "\n".join(lines)


# -- the chosen model, as a run ----------------------------------------------------------------------
def save_chosen(run: Run, interpolation: Interpolation, alpha: float, out: Path, info: dict, id_metrics: dict) -> None:
    """A run directory for θ(α): ``merge``, ``export`` and ``score`` take it like any run, and its
    ``init/`` is θ0, so sweeping it again stays on the same line."""
    from safetensors.torch import save_file

    interpolation.set(alpha)
    with atomic_dir(out / WEIGHTS_DIR) as tmp:
        run.model.save_weights(tmp)
    head_init = "lp" if architecture(run.model.cfg.arch).has_head else "none"
    start = interpolation.start
    if interpolation.start_name == "init" and adapter_kind(run.model.cfg.adapter).full:  # the base model's: not copied
        start = {n: t for n, t in start.items() if ".heads." in n}
    with atomic_dir(out / INIT_DIR) as tmp:
        save_file({n: t.contiguous() for n, t in start.items()}, str(tmp / INIT_WEIGHTS),
                  metadata={"head_init": head_init})
    write_json(out / METRICS, {"dev": id_metrics, "params": run.model.parameter_counts(), "wise": info})
    config = {k: v for k, v in run.config.items() if k != "kind"}
    write_json(out / CONFIG, {**config, "wise": info})  # last: only now is ``out`` a run


def wise(run_dir: str | Path, out: str | Path, sets: Sequence[EvalSet], options: SourceOptions, cfg: WiseConfig,
         start_dir: Optional[str | Path] = None, choose: bool = False, overwrite: bool = False,
         say: Callable[[str], None] = print) -> WiseResult:
    """Sweep α over ``sets``, write ``results.jsonl`` and ``wise.png`` into ``out``; with ``choose``,
    ``out`` also becomes a run directory holding the chosen θ(α)."""
    from toolkit.scoring.plots import plot_wise

    cfg.validate()
    out = Path(out)
    if out.resolve() == Path(run_dir).resolve():
        raise ToolkitError(f"{out}: --out must not be the run being interpolated")
    refuse_existing(out, overwrite, empty_ok=True)
    run = load_run(run_dir, fused_kernel="off")
    if not any(s.role == "id" for s in sets):  # the run's own dev pairs, read as training read them
        name, path, pairs = recorded_dev(run.config, str(Path(run_dir) / CONFIG), "--id FILE")
        sets = [EvalSet(name, path, "id", pairs), *sets]
    if len({s.name for s in sets}) != len(sets):
        raise ToolkitError("two evaluation sets have the same name: name them NAME=PATH")
    start = load_run(start_dir, fused_kernel="off") if start_dir is not None else None
    interpolation = Interpolation(run, start)
    if interpolation.same_ends():
        say(f"warning: {run_dir} holds the weights it is interpolated from (a run whose best epoch is 0 keeps "
            "its start), so every α gives the same model")
    if cfg.choose_on is not None and cfg.choose_on not in {s.name for s in sets}:
        raise ToolkitError(f"--choose-on {cfg.choose_on}: no such evaluation set (sets: "
                           f"{', '.join(s.name for s in sets)})")
    records = sweep(run, interpolation, sets, options, cfg, say)
    chosen = choose_alpha(records, cfg.metric, cfg.tie, cfg.choose_on) if choose else None

    out.mkdir(parents=True, exist_ok=True)
    if (out / CONFIG).exists():  # an earlier --choose here: no longer a run until the new one is written
        (out / CONFIG).unlink()
    with atomic_path(out / RESULTS) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    start_label = architecture(run.model.cfg.arch).zero_point
    if start is not None:
        start_label = start.folder.name
    plot_wise(out / PLOT, records, cfg.metric, chosen, title=f"WiSE-FT: {Path(run_dir).name}",
              start_label=start_label)
    say(table(records, cfg.metric, chosen))
    if chosen is not None:
        id_set = next(s for s in sets if (s.name == cfg.choose_on if cfg.choose_on else s.role == "id"))
        id_metrics = next(r for r in records if r["alpha"] == chosen and r["set"] == id_set.name
                          and r["mode"] == "weights")
        info = {"alpha": chosen, "run": str(Path(run_dir).resolve()), "start": interpolation.start_name,
                "chosen_on": id_set.path, "chosen_on_set": id_set.name, "chosen_on_role": id_set.role,
                "metric": cfg.metric, "tie": cfg.tie,
                "rule": f"best {cfg.metric} on {id_set.name} ({id_set.role}); ties (within `tie`) to the smallest α"}
        if cfg.ensemble:
            info["ensemble_alpha"] = choose_alpha(records, cfg.metric, cfg.tie, cfg.choose_on, mode="outputs")
        save_chosen(run, interpolation, chosen, out, info, {k: v for k, v in id_metrics.items()
                                                            if k not in ("alpha", "mode", "set", "role", "data")})
        say(f"chosen α = {chosen:g} ({cfg.metric} on {id_set.name}, {id_set.role}: {format_metrics(id_metrics)}); "
            f"saved as a run in {out}")
    return WiseResult(records, chosen, out)

