"""The ``toolkit`` command: parses arguments and calls library functions, nothing more."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .errors import ToolkitError
from .sources.options import FORMATS, Columns, SourceOptions


def _score_range(text: str) -> tuple[float, float]:
    parts = text.replace(",", ":").split(":")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, e.g. 0:5, not {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"empty range {text!r}: LOW must be below HIGH")
    return lo, hi


def add_source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pair file")
    g.add_argument("--s1-col", default="sentence1", help="first sentence column (default: %(default)s)")
    g.add_argument("--s2-col", default="sentence2", help="second sentence column (default: %(default)s)")
    g.add_argument("--score-col", default="score", help="gold score column (default: %(default)s)")
    g.add_argument("--id-col", help="pair id column (default: the row number)")
    g.add_argument("--group-col", help="column for per-group metrics (STS-B release: genre)")
    g.add_argument("--format", default="auto", choices=FORMATS, help="override the format the extension implies")
    g.add_argument("--table", help="SQLite: table to read")
    g.add_argument("--query", help="SQLite: SELECT whose rows to read")
    g.add_argument("--quoting", default="auto", choices=("auto", "csv", "none"),
                   help="CSV/TSV quotes: csv = RFC 4180, none = quotes are text (auto: none for the STS-B release)")
    g.add_argument("--score-range", type=_score_range, metavar="LOW:HIGH",
                   help="declared score range; rows outside are bad (STS-B release: 0:5)")
    g.add_argument("--skip-bad-rows", action="store_true", help="skip bad rows and report them instead of stopping")
    g.add_argument("--limit", type=int, help="read at most this many good rows per file")


def source_options(args: argparse.Namespace, need_score: bool = True) -> SourceOptions:
    return SourceOptions(
        columns=Columns(s1=args.s1_col, s2=args.s2_col, score=args.score_col, id=args.id_col, group=args.group_col),
        format=args.format, table=args.table, query=args.query, quoting=args.quoting,
        score_range=args.score_range, need_score=need_score,
        policy="skip" if args.skip_bad_rows else "fail", limit=args.limit)


# -- commands ---------------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from .check import check_file

    result = check_file(args.file, source_options(args, need_score=not args.no_score))
    for line in result.lines():
        print(line)
    return 0 if result.ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    from .model import ModelConfig
    from .sources import resolve_data_spec
    from .train import DataConfig, TrainConfig, resume, train

    if args.resume:
        resume(args.resume, trust_remote_code=args.trust_remote_code)
        return 0
    if not args.out:
        raise ToolkitError("name the run directory: --out RUN (or --resume RUN to continue one)")
    if args.data:
        if args.train or args.dev:
            raise ToolkitError("pass either --data or --train/--dev, not both")
        splits = resolve_data_spec(args.data)
        train_path, dev_path = str(splits["train"]), str(splits["dev"])
    elif args.train and args.dev:
        train_path, dev_path = args.train, args.dev
    else:
        raise ToolkitError("name the data: --data stsb:FOLDER, or --train FILE and --dev FILE")
    model_cfg = ModelConfig(base_model=args.model, arch=args.arch, adapter=args.adapter,
                            reduction_factor=args.reduction_factor, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                            max_length=args.max_length, dropout=args.dropout, fused_kernel=args.fused_kernel,
                            trust_remote_code=args.trust_remote_code)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, global_batch_size=args.global_batch_size,
                      grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay,
                      warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm, seed=args.seed,
                      precision=args.precision, group_by_length=not args.no_group_by_length,
                      patience=args.patience if args.patience > 0 else None, metric=args.metric,
                      normalize=args.normalize, save_steps=args.save_steps, keep_checkpoint=args.keep_checkpoint,
                      eval_batch_size=args.eval_batch_size, head_init=args.head_init, log_steps=args.log_steps,
                      log_with=args.log_with)
    data = DataConfig(train_path, dev_path, source_options(args), dev_table=args.dev_table, dev_query=args.dev_query)
    train(args.out, data, model_cfg, cfg, overwrite=args.overwrite, resume_if_exists=args.resume_if_exists)
    return 0


def _data_path(text: str, split: str = "test") -> str:
    if text.startswith("stsb:"):
        from .sources import resolve_data_spec

        return str(resolve_data_spec(text)[split])
    return text


def _open_model(args: argparse.Namespace):
    """A run, a merged folder or an ONNX bundle (a bundle without importing torch); says what serves it."""
    from .load import load_model

    model = load_model(args.run, trust_remote_code=args.trust_remote_code, provider=args.provider)
    if hasattr(model, "describe"):
        print(f"model: {args.run} on {model.describe()}", file=sys.stderr)
    return model


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_file
    from .metrics import format_metrics

    run = _open_model(args)
    metrics, warnings, skipped = evaluate_file(run, _data_path(args.data), source_options(args),
                                               batch_size=args.batch_size, json_path=args.json, plot_path=args.plot)
    if skipped:
        print(skipped, file=sys.stderr)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.run} on {args.data}: {format_metrics(metrics)}")
    for group, m in metrics.get("groups", {}).items():
        print(f"  {group}: {format_metrics(m)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if not args.sentence1.strip() or not args.sentence2.strip():
        raise ToolkitError("predict: both sentences must be non-empty")
    run = _open_model(args)
    score = run.predictor().predict([args.sentence1], [args.sentence2])[0]
    print(f"{score:.4f}")
    return 0


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 3/16, not {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text}: need 0 <= I < N")
    return i, n


def cmd_score(args: argparse.Namespace) -> int:
    from .score import ScoreConfig, score_file

    cfg = ScoreConfig(chunk_size=args.chunk_size, batch_size=args.batch_size, threads=args.threads,
                      shard=args.shard, restart=args.restart, keep_cols=tuple(args.keep_cols or ()),
                      progress=not args.quiet, provider=args.provider)
    if args.engine == "ray":
        from .score_ray import RayConfig, score_ray

        summary = score_ray(args.model, args.input, args.output, source_options(args), cfg,
                            RayConfig(num_gpus_per_actor=args.num_gpus_per_actor, actors=args.actors))
    else:
        summary = score_file(args.model, args.input, args.output, source_options(args), cfg)
    for line in summary.skipped_report:
        print(f"skipped: {line}", file=sys.stderr)
    if summary.backend:
        print(f"model: {args.model} on {summary.backend}", file=sys.stderr)
    print(f"scored {summary.written} pairs into {summary.output} ({summary.rows} rows read, {summary.bad} bad "
          f"skipped{f', {summary.resumed_parts} parts resumed' if summary.resumed_parts else ''}) "
          f"in {summary.seconds:.1f}s, {summary.rate:.0f} pairs/s", file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_run

    out = merge_run(args.run, args.out, overwrite=args.overwrite)
    print(f"merged model written to {out} (transformers loads {out}/model)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportConfig, export_onnx

    if args.onnx == args.sentence_transformers:
        raise ToolkitError("export: name one format: --onnx or --sentence-transformers")
    if args.sentence_transformers:
        from .st_folders import export_sentence_transformers

        export_sentence_transformers(args.run, args.out, overwrite=args.overwrite,
                                     log=lambda line: print(line, file=sys.stderr, flush=True))
        return 0
    cfg = ExportConfig(fp16=args.fp16, quantize=args.quantize, opset=args.opset, verify_data=args.verify_data,
                       verify_pairs=args.verify_pairs, threads=args.threads, provider=args.provider)
    export_onnx(args.run, args.out, cfg, overwrite=args.overwrite,
                log=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def _eval_set(text: str, role: str, split: str):
    """``[NAME=]PATH`` (``stsb:FOLDER`` takes the split the role reads)."""
    from pathlib import Path

    from .wise import EvalSet

    name, sep, path = text.partition("=")
    if not sep or not name or "/" in name or name.startswith("stsb:"):
        name, path = "", text
    path = _data_path(path, split)
    return EvalSet(name or Path(path).stem, path, role)


def cmd_wise(args: argparse.Namespace) -> int:
    from .wise import WiseConfig, parse_alphas, wise

    sets = [_eval_set(args.id, "id", "dev")] if args.id else []
    sets += [_eval_set(t, "ood", "test") for t in args.ood or ()]
    sets += [_eval_set(t, "test", "test") for t in args.test or ()]
    cfg = WiseConfig(alphas=parse_alphas(args.alphas), metric=args.metric, tie=args.tie,
                     batch_size=args.batch_size, progress=not args.quiet)
    wise(args.run, args.out, sets, source_options(args), cfg, start_dir=args.start, choose=args.choose,
         overwrite=args.overwrite, say=print)
    return 0


def cmd_shift_splits(args: argparse.Namespace) -> int:
    from .shift import write_genre_shift

    counts = write_genre_shift(args.stsb, args.out)
    for folder, files in counts.items():
        print(f"{args.out}/{folder}: " + ", ".join(f"{name} {n}" for name, n in files.items()))
    return 0


# -- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .choices import ADAPTERS, ARCHS
    from .metrics import HIGHER_IS_BETTER

    parser = argparse.ArgumentParser(prog="toolkit", description="Adapter fine-tuning for sentence-pair regression.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a pair file: rows and every problem")
    p.add_argument("file")
    p.add_argument("--no-score", action="store_true", help="the file has no gold scores (to be scored)")
    add_source_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("train", help="train an adapter and regression head; writes a run directory")
    add_train_args(p, ARCHS, ADAPTERS, HIGHER_IS_BETTER)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="metrics of a run or an ONNX bundle on a pair file (JSON, plot)")
    p.add_argument("run")
    p.add_argument("--data", required=True, help="pair file (or stsb:FOLDER for its test split)")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--plot", help="write a predicted-vs-gold PNG here")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--trust-remote-code", action="store_true")
    add_provider_arg(p)
    add_source_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("merge", help="fold a LoRA/IA3 run into the base weights (a plain transformers model)")
    p.add_argument("run")
    p.add_argument("--out", required=True, help="merged model directory to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("export", help="export a run or merged model to a verified ONNX bundle or a "
                       "sentence-transformers folder")
    p.add_argument("run", help="run directory or merged model directory")
    p.add_argument("--onnx", action="store_true", help="ONNX + ONNX Runtime bundle")
    p.add_argument("--sentence-transformers", action="store_true",
                   help="a folder SentenceTransformer(path) (bi) or CrossEncoder(path) (cross) loads; LoRA/IA3 runs")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--fp16", action="store_true", help="fp16 weights and activations (for GPUs)")
    p.add_argument("--quantize", choices=("int8",), help="int8 dynamic quantisation (for CPUs)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--verify-data", help="pair file for the verification gate (default: the run's dev file)")
    p.add_argument("--verify-pairs", type=int, default=256, help="pairs compared for fp32 (default: %(default)s)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for the verification")
    add_provider_arg(p, "the verification gate runs on the provider that will serve the bundle: ")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("score", help="stream-score a pair file with a bundle or run; resumable, shardable")
    p.add_argument("model", help="ONNX bundle or run directory")
    p.add_argument("input", help="pair file (CSV/TSV/JSONL/Parquet/SQLite); --engine ray: also a folder of them")
    p.add_argument("-o", "--output", required=True, help="output file (.parquet/.csv/.tsv/.jsonl) or folder/ "
                   "(--engine ray: a folder of Parquet files)")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: this process; ray: Ray Data on RAY_ADDRESS's cluster or a local Ray (default: local)")
    p.add_argument("--num-gpus-per-actor", type=float, default=0.0,
                   help="--engine ray: GPUs per scoring actor; 0 = CPU actors (default: %(default)s)")
    p.add_argument("--actors", type=int, help="--engine ray: scoring actors (default: cluster CPUs / --threads, "
                   "or GPUs / --num-gpus-per-actor)")
    p.add_argument("--keep-cols", nargs="+", metavar="COL", help="input columns to copy into the output")
    p.add_argument("--shard", type=_shard, metavar="I/N", help="score only shard I of N (0-based)")
    p.add_argument("--chunk-size", type=int, default=8192, help="records per part (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="ONNX Runtime / torch threads (default: all cores; "
                   "--engine ray: per actor, default 1)")
    p.add_argument("--restart", action="store_true", help="discard an earlier attempt's parts and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_provider_arg(p)
    add_source_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("wise", help="WiSE-FT: interpolate a run between its start and its trained weights, "
                       "sweep α on in-distribution and shifted sets, optionally save the chosen α as a run")
    p.add_argument("run", help="run directory (θ1)")
    p.add_argument("--out", required=True, help="folder for results.jsonl and wise.png (with --choose: a run)")
    p.add_argument("--id", metavar="[NAME=]FILE", help="in-distribution held-out set; α is chosen on it "
                   "(default: the run's dev file; stsb:FOLDER takes its dev split)")
    p.add_argument("--ood", action="append", metavar="[NAME=]FILE", help="shifted set (repeatable)")
    p.add_argument("--test", action="append", metavar="[NAME=]FILE",
                   help="more in-distribution sets, reported and never used to choose (repeatable)")
    p.add_argument("--alphas", default="0:1:0.1", help="START:STOP:STEP or a list a,b,c (default: %(default)s)")
    p.add_argument("--start", metavar="RUN", help="θ0 = another run of the same model and adapter "
                   "(default: the weights this run's training started from)")
    p.add_argument("--choose", action="store_true", help="save the chosen α as a run in --out "
                   "(rule: best --id metric; within --tie of it, the smallest α)")
    p.add_argument("--metric", default="spearman", choices=list(HIGHER_IS_BETTER))
    p.add_argument("--tie", type=float, default=0.001,
                   help="metric difference counted as a tie (default: %(default)s = 0.1 Spearman points)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true")
    add_source_args(p)
    p.set_defaults(func=cmd_wise)

    p = sub.add_parser("shift-splits", help="write STS-B genre-shift splits: train on two genres, test on the third")
    p.add_argument("stsb", help="the STS-B release folder")
    p.add_argument("--out", required=True, help="folder for heldout-{captions,news,forum}/")
    p.set_defaults(func=cmd_shift_splits)

    p = sub.add_parser("predict", help="score one pair with a run or an ONNX bundle")
    p.add_argument("run")
    p.add_argument("sentence1")
    p.add_argument("sentence2")
    p.add_argument("--trust-remote-code", action="store_true")
    add_provider_arg(p)
    p.set_defaults(func=cmd_predict)
    return parser


def add_provider_arg(p: argparse.ArgumentParser, lead: str = "") -> None:
    p.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda"),
                   help=f"{lead}ONNX Runtime provider for a bundle: auto = CPU for int8, CUDA for fp32/fp16 where "
                   "onnxruntime has it (default: %(default)s)")


def add_train_args(p: argparse.ArgumentParser, archs, adapters, metrics) -> None:
    """Training arguments; shared with launch/train.py so both take exactly the same ones."""
    g = p.add_argument_group("data")
    g.add_argument("--data", help="stsb:FOLDER (the STS Benchmark release: its train and dev splits)")
    g.add_argument("--train", help="training pair file")
    g.add_argument("--dev", help="dev pair file (model selection, early stopping)")
    g.add_argument("--dev-table", help="SQLite: table for the dev split (--table applies to --train)")
    g.add_argument("--dev-query", help="SQLite: query for the dev split")
    g.add_argument("--out", help="run directory to write")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint, with the settings it "
                   "was started with (other flags are not used)")
    g.add_argument("--resume-if-exists", action="store_true",
                   help="if --out already holds this run (same settings), continue it from its last checkpoint, "
                   "or do nothing if it finished; for job schedulers that rerun the same command (SLURM --requeue)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="all-MiniLM-L6-v2",
                   help="short name or local model folder (default: %(default)s)")
    g.add_argument("--arch", default="bi", choices=archs,
                   help="bi: cosine of two embeddings; cross: joint encoding + head")
    g.add_argument("--adapter", default="seq_bn", choices=adapters, help="adapter type; none = full fine-tuning")
    g.add_argument("--reduction-factor", type=float, help="bottleneck adapters: hidden size / bottleneck width")
    g.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: %(default)s)")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: equal to the rank)")
    g.add_argument("--max-length", type=int, default=128, help="tokens per input (default: %(default)s)")
    g.add_argument("--fused-kernel", default="auto", choices=("auto", "on", "off"),
                   help="Triton kernel for bottleneck adapters (default auto: on with a CUDA GPU and Triton)")
    g.add_argument("--dropout", type=float, help="rate of every dropout layer (default: the model's own)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow a model folder's own code (auto_map)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=4)
    g.add_argument("--batch-size", type=int, default=16, help="per device (default: %(default)s)")
    g.add_argument("--global-batch-size", type=int,
                   help="effective batch; per device = this / (processes x accumulation), which must divide it")
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--eval-batch-size", type=int, default=128, help="dev evaluation batch (default: %(default)s)")
    g.add_argument("--lr", type=float, help="learning rate (default: 1e-3 for adapters, 2e-5 for full fine-tuning)")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--precision", default="auto", choices=("auto", "no", "bf16", "fp16"),
                   help="mixed precision; auto: the accelerate config's, else none")
    g.add_argument("--no-group-by-length", action="store_true", help="plain shuffled batches")
    g.add_argument("--patience", type=int, default=2, help="early stopping patience in epochs; 0 disables")
    g.add_argument("--metric", default="spearman", choices=list(metrics), help="dev metric for model selection")
    g.add_argument("--normalize", default="auto", choices=("auto", "range", "zscore"),
                   help="target scaling (auto: the declared range, else z-score)")
    g.add_argument("--save-steps", type=int, default=0,
                   help="also checkpoint every N optimiser steps for --resume (default: at epoch ends only)")
    g.add_argument("--keep-checkpoint", action="store_true", help="keep the resumable checkpoint after the run")
    g.add_argument("--log-steps", type=int, default=10,
                   help="log the training loss (mean over processes) every N optimiser steps (default: %(default)s)")
    g.add_argument("--log-with", help="also log loss, learning rate and dev metrics to an accelerate tracker: "
                   "tensorboard (event files under RUN/trackers/; the 'tracking' extra), wandb, mlflow, ...")
    g.add_argument("--head-init", default="random", choices=("random", "lp"),
                   help="cross-encoders: lp fits the head on frozen pre-trained features first (LP-FT); "
                   "`toolkit wise` needs it (default: %(default)s)")
    add_source_args(p)


def _rank_prefix() -> str:
    """Under a distributed launcher every process reports; rank 0's line reads as on one process."""
    rank = os.environ.get("RANK", "0")
    return f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank != "0" else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ToolkitError as e:
        sys.stderr.write(_rank_prefix() + str(e) + "\n")  # one write: ranks' lines do not interleave
        sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug, not bad input: one line unless asked for the traceback
        if os.environ.get("TOOLKIT_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"toolkit: internal error: {type(e).__name__}: {first} (TOOLKIT_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
