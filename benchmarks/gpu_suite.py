"""Every GPU measurement in one prepared run: environment, fused kernel (+ launch-shape sweep),
training with and without the kernel, GPU scoring against sentence-transformers' CrossEncoder.

GPU time comes in minutes, so each part is timed and guarded: a part that fails is reported (one
line in the table, its traceback in suite.log) and the next part still runs; results.json and
results.md are rewritten after every part, so a run cut short keeps what it measured.

Here (no GPU), once before a GPU run, from the repo root (.whl/ and .gpu/ are git-ignored there):
    bash ../shared/tools/gpu-wheels.sh sentence-transformers==5.7.0 tyro==1.0.17 typeguard==4.6.1 \\
        docstring-parser==0.18.0
    .venv/bin/python benchmarks/gpu_suite.py --prepare .gpu   # STS-B + the base model (fp16 weights);
                          # also deletes the wheels the suite does not need (64 MiB carry limit)
On the GPU machine (the `device` tool: carry [".whl", ".gpu"], timeout_s 560), one line:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
    .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && timeout 540 \\
    python3 benchmarks/gpu_suite.py --out $OUT --model .gpu/minilm --stsb .gpu/stsb
On a CPU (CI; every part at tiny sizes, the kernel in Triton's interpreter, under 3 minutes):
    TRITON_INTERPRET=1 .venv/bin/python benchmarks/gpu_suite.py --smoke --out DIR

The carried base model has its weights stored in fp16 (all-MiniLM-L6-v2 in fp32 is 91 MB, over the
64 MiB a device call carries); they load as float32, rounded to 11 significant bits. Speed does not
depend on it; the scoring part's Spearman changes are against an fp32 reference of the same weights.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench_adapter_kernel as bak  # noqa: E402
from machine_info import cpu_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STSB = REPO.parent / "shared" / "data" / "stsb"
PARTS = ("env", "kernel", "train", "score", "tune")  # tune last: the rest matters more if time runs out
# Targets of the kernel and scoring issues (issue 20): (figure key, threshold, what it says)
KERNEL_TARGETS = (("pct_copy", "fwd", 90.0, "forward ≥ 90% of copy bandwidth"),
                  ("x_eager", "fwd", 2.2, "forward ≥ 2.2× eager"),
                  ("x_compile", "fwd", 1.3, "forward ≥ 1.3× torch.compile"),
                  ("x_eager", "fwd_bwd", 1.6, "forward+backward ≥ 1.6× eager"))
SCORE_SPEEDUP, SCORE_MAX_DROP = 1.5, 0.3
# what --prepare copies of the base model (README, Pooling config etc. are not read by the toolkit)
# the wheels a GPU image lacks (transformers 4.57 + its pins, and what the toolkit imports beyond the image)
WHEELS = ("adapters", "transformers", "tokenizers", "huggingface_hub", "sentence_transformers", "tyro",
          "typeguard", "docstring_parser")
MODEL_FILES = ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
               "tokenizer_config.json", "vocab.txt")


@dataclass
class Part:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    error: str = ""
    figures: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    decisions: list = field(default_factory=list)  # (target, figure text, met: bool | None)

    def decide(self, target: str, figure: str, met: Optional[bool]) -> None:
        self.decisions.append({"target": target, "figure": figure, "met": met})


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = args.smoke
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu-suite-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.parts: dict[str, Part] = {}
        self.copy_gbs: Optional[float] = None
        self.started = time.time()

    def log(self, line: str) -> None:
        print(line, flush=True)
        with open(self.out / "suite.log", "a") as f:
            f.write(line + "\n")

    def run(self, name: str, fn: Callable[[Part], None]) -> None:
        part = self.parts[name] = Part(name)
        self.log(f"== {name} ({time.time() - self.started:.0f} s into the run)")
        t = time.perf_counter()
        try:
            fn(part)
            part.status = "ok"
        except BaseException as e:  # a failed part is reported; the next one runs (SystemExit too)
            if isinstance(e, KeyboardInterrupt):
                raise
            text = " ".join(str(e).split())[:300]
            part.status, part.error = "failed", f"{type(e).__name__}: {text}"
            self.log(traceback.format_exc())
        part.seconds = time.perf_counter() - t
        if self.cuda:
            torch.cuda.empty_cache()
        self.log(f"== {name}: {part.status} in {part.seconds:.1f} s {part.error}")
        self.write()

    def write(self) -> None:
        """results.json and results.md, atomically (each rewritten after every part)."""
        data = {"date": str(date.today()), "smoke": self.smoke, "device": self.device,
                "command": " ".join(sys.argv), "parts": {k: vars(p) for k, p in self.parts.items()}}
        for name, text in (("results.json", json.dumps(data, indent=1, default=str)),
                           ("results.md", self.markdown())):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def markdown(self) -> str:
        env = self.parts.get("env")
        head = env.figures.get("device", "?") if env else "?"
        lines = [f"# GPU suite, {date.today()}{' (smoke: tiny sizes, timings meaningless)' if self.smoke else ''}",
                 f"device: {head}", "", "| part | status | seconds | decision |", "|---|---|---:|---|"]
        for p in self.parts.values():
            said = "; ".join(f"{d['target']}: {d['figure']} — "
                             f"{'met' if d['met'] else 'NOT met' if d['met'] is False else 'info'}"
                             for d in p.decisions) or p.error
            lines.append(f"| {p.name} | {p.status} | {p.seconds:.0f} | {said} |")
        for p in self.parts.values():
            if p.figures:
                lines += ["", f"## {p.name}", ""] + [f"- {k}: {v}" for k, v in p.figures.items()]
            if p.rows:
                keys = list(p.rows[0])
                lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in p.rows]
        return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed: say so rather than fail the part
        return "absent"


# ---------------------------------------------------------------------------------------------- env
def part_env(s: Suite, p: Part) -> None:
    f = p.figures
    if s.cuda:
        props = torch.cuda.get_device_properties(0)
        f["device"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, " \
                      f"L2 {getattr(props, 'L2_cache_size', 0) / 2**20:.0f} MiB"
        f["gpus"] = torch.cuda.device_count()
        f["cuda (torch)"] = torch.version.cuda
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            f["driver, SM clock, memory clock"] = smi.stdout.strip() or smi.stderr.strip()[:120]
        except (OSError, subprocess.TimeoutExpired) as e:
            f["driver"] = f"nvidia-smi did not answer ({type(e).__name__})"
    else:
        f["device"] = "CPU, no GPU"
    f["host CPU"] = cpu_info()
    f["python"] = platform.python_version()
    for name in ("torch", "triton", "onnxruntime", "onnxruntime-gpu", "transformers", "adapters",
                 "sentence-transformers", "accelerate", "tokenizers"):
        f[name] = _version(name)
    try:
        import onnxruntime as ort

        f["onnxruntime providers"] = ", ".join(ort.get_available_providers())
    except ImportError:
        f["onnxruntime providers"] = "onnxruntime absent"
    s.copy_gbs = bak.copy_bandwidth(s.device, s.cuda)
    f["copy GB/s (device-to-device, read+write)"] = round(s.copy_gbs)
    if s.cuda:
        a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        ms = bak.bench(lambda: a @ b, True)
        f["bf16 GEMM TFLOP/s (8192³, random data)"] = round(2 * 8192 ** 3 / ms / 1e9)
    p.decide("copy bandwidth (the kernel's roofline)", f"{s.copy_gbs:.0f} GB/s", None)


# ------------------------------------------------------------------------------------------- kernel
def _kernel_shapes(smoke: bool):
    if smoke:  # the interpreter: every dtype checked, the first (the smallest) timed
        return [(torch.float32, 70, 128, 8), (torch.float32, 130, 384, 24), (torch.bfloat16, 130, 384, 24),
                (torch.float16, 70, 128, 8)]
    # MiniLM-L6 (H 384, seq_bn's default bottleneck 24) and BERT-base (H 768, 48) at 64k tokens; bf16
    # (training's dtype) also at 8k. Each shape costs torch.compile a compilation: kept to eight.
    shapes = [(dt, 65536, H, r) for dt in (torch.bfloat16, torch.float16, torch.float32)
              for (H, r) in ((384, 24), (768, 48))]
    return shapes[:2] + [(torch.bfloat16, 8192, 384, 24), (torch.bfloat16, 8192, 768, 48)] + shapes[2:]


def _compiled(s: Suite):
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 64  # one compilation per shape, never a silent eager fallback
    # CPU smoke: dynamo traces the reference but hands it back eagerly (no C++ toolchain needed)
    return torch.compile(bak.eager, dynamic=False, backend="inductor" if s.cuda else "eager")


def _graph_timer(s: Suite) -> Callable[[Callable], float]:
    """CUDA-graph replay timing (the kernels' GPU time); per-call timing where a variant cannot be captured."""
    def timer(fn: Callable) -> float:
        try:
            return bak.bench_graph(fn)
        except Exception as e:  # a capture failure: say so, time it per call
            s.log(f"CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); per-call timing")
            torch.cuda.synchronize()
            return bak.bench(fn, True)
    return timer


def part_kernel(s: Suite, p: Part) -> None:
    if s.copy_gbs is None:
        s.copy_gbs = bak.copy_bandwidth(s.device, s.cuda)
    compiled = _compiled(s)
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) if s.cuda else 1 << 20
    for i, (dtype, T, H, r) in enumerate(_kernel_shapes(s.smoke)):
        name = str(dtype).split(".")[-1]
        row = {"dtype": name, "T": T, "H": H, "r": r}
        try:
            row["max rel err"] = bak.check(min(T, 4096), H, r, dtype, s.device, compiled)
        except SystemExit as e:  # the bench's check says why in its message
            row["max rel err"] = f"FAILED: {e}"
            p.rows.append(row)
            continue
        if s.smoke and i:
            p.rows.append(row)
            continue
        per_call = bak.time_variants(T, H, r, dtype, s.device, s.cuda, compiled, l2)
        graph = bak.time_variants(T, H, r, dtype, s.device, s.cuda, compiled, l2, _graph_timer(s)) \
            if s.cuda else per_call
        nbytes = torch.finfo(dtype).bits // 8
        for kind, traffic in (("fwd", 2), ("fwd_bwd", 5)):
            ms = graph["fused"][kind]
            gbs = traffic * T * H * nbytes / ms / 1e6
            p.rows.append({**row, "pass": kind, "fused ms": ms, "GB/s": gbs, "% copy": 100 * gbs / s.copy_gbs,
                           "x eager": graph["eager"][kind] / ms, "x compile": graph["compile"][kind] / ms,
                           "per call: fused ms": per_call["fused"][kind],
                           "per call: x eager": per_call["eager"][kind] / per_call["fused"][kind],
                           "per call: x compile": per_call["compile"][kind] / per_call["fused"][kind]})
        s.log(f"kernel {name} T={T} H={H} r={r}: fused fwd {graph['fused']['fwd']:.4f} ms (graph), "
              f"{per_call['fused']['fwd']:.4f} ms (per call); fwd+bwd {graph['fused']['fwd_bwd']:.4f} / "
              f"{per_call['fused']['fwd_bwd']:.4f} ms")
    failed = [r for r in p.rows if isinstance(r.get("max rel err"), str)]
    cases = len(_kernel_shapes(s.smoke))
    p.decide("correctness vs float64 reference (fwd+bwd, every dtype and shape)",
             f"{len(failed)} of {cases} cases failed" if failed else f"all {cases} passed", not failed)
    if failed:
        raise RuntimeError(f"kernel disagrees with the reference: {failed[0]['max rel err']}")
    timed = [r for r in p.rows if "pass" in r]
    big = max(r["T"] for r in timed)
    for key, kind, threshold, target in KERNEL_TARGETS:
        rows = [r for r in timed if r["pass"] == kind and r["T"] == big]
        col = key.replace("pct_copy", "% copy").replace("x_", "x ")
        worst = min(rows, key=lambda r: r[col])
        best = max(rows, key=lambda r: r[col])
        p.decide(f"{target} (GPU time, CUDA graph replay)",
                 f"worst {worst[col]:.2f} ({worst['dtype']} H={worst['H']}), best {best[col]:.2f} ({best['dtype']} "
                 f"H={best['H']}), T={big}", None if s.smoke else bool(worst[col] >= threshold))


# --------------------------------------------------------------------------------------------- tune
def part_tune(s: Suite, p: Part) -> None:
    """Launch shapes (rows and columns per program, warps) over a small grid, each checked first."""
    from toolkit.kernels import adapter_bottleneck as ab

    if s.copy_gbs is None:
        s.copy_gbs = bak.copy_bandwidth(s.device, s.cuda)
    default = (ab.BLOCK_T, ab.BLOCK_H, ab.NUM_WARPS)
    if s.smoke:
        grid, shapes = [(64, 64, 4), (32, 64, 4)], [(torch.float32, 70, 128, 8)]
    else:
        grid = [(bt, bh, nw) for bt in (32, 64) for bh in (64, 128) for nw in (4, 8)] + [(128, 64, 8)]
        shapes = [(torch.bfloat16, 65536, 384, 24), (torch.bfloat16, 65536, 768, 48)]
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) if s.cuda else 1 << 20
    for dtype, T, H, r in shapes:
        copies = max(1, min(8, -(-4 * l2 // (T * H * 2))))
        sets = [bak.make_inputs(T, H, r, dtype, s.device, True) for _ in range(copies)]
        for bt, bh, nw in grid:
            row = {"BLOCK_T": bt, "BLOCK_H": bh, "warps": nw, "H": H, "default": (bt, bh, nw) == default}
            try:
                with ab.launch_shape(bt, bh, nw):
                    bak.check(min(T, 1024), H, r, dtype, s.device, bak.eager)
                    cyc = itertools.cycle(sets)

                    def fwd():
                        with torch.no_grad():
                            bak.fused(*next(cyc)[:-1])

                    def fwd_bwd():
                        *inp, dy = next(cyc)
                        for t in inp:
                            t.grad = None
                        bak.fused(*inp).backward(dy)

                    timer = _graph_timer(s) if s.cuda else (lambda fn: bak.bench(fn, False))
                    row["fwd ms"], row["fwd_bwd ms"] = timer(fwd), timer(fwd_bwd)
                row["fwd % copy"] = 100 * 2 * T * H * 2 / row["fwd ms"] / 1e6 / s.copy_gbs
            except BaseException as e:  # a shape that does not compile or is wrong: a row says so
                if isinstance(e, KeyboardInterrupt):
                    raise
                row["fwd ms"] = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:80]}"
            p.rows.append(row)
        ok = [r for r in p.rows if r["H"] == H and isinstance(r.get("fwd ms"), float)]
        if not ok:
            raise RuntimeError(f"no launch shape ran at H={H}")
        base = next((r for r in ok if r["default"]), None)
        for col in ("fwd ms", "fwd_bwd ms"):
            best = min(ok, key=lambda r: r[col])
            vs = f", {base[col] / best[col]:.2f}× the default {default}" if base else ""
            p.decide(f"best launch shape, {col.split()[0]}, H={H} {str(dtype).split('.')[-1]}",
                     f"{(best['BLOCK_T'], best['BLOCK_H'], best['warps'])}: {best[col]:.3f} ms{vs}", None)


# -------------------------------------------------------------------------------------------- train
def _model_folder(s: Suite) -> Path:
    from toolkit.model.safe_loading import resolve_model

    return resolve_model(s.args.model)[1]


def _read(path: Path):
    from toolkit.sources import SourceOptions, read_pairs

    return read_pairs(path, SourceOptions(), gold=True)[0]


def _step_loop(s: Suite, fused: str, batch: int, steps: int, warmup: int, max_length: int, train) -> dict:
    """The default recipe's model (bi-encoder, seq_bn) trained ``steps`` optimiser steps on STS-B
    batches in a fixed order: what the fused kernel changes is the time, not the loss."""
    from toolkit.kernels.adapter_module import FusedBottleneckAdapter
    from toolkit.model.batching import PairTokenizer
    from toolkit.model.safe_loading import load_tokenizer
    from toolkit.model.config import ModelConfig
    from toolkit.model.regressor import PairRegressor

    folder = _model_folder(s)
    if s.cuda:  # what earlier parts left allocated is not this loop's
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated()
    torch.manual_seed(0)
    model = PairRegressor.create(ModelConfig(base_model=str(folder), fused_kernel=fused), folder).to(s.device).train()
    fused_layers = sum(isinstance(m, FusedBottleneckAdapter) for m in model.modules())
    tokens = PairTokenizer(load_tokenizer(folder, False), "bi", max_length)
    a, b = tokens.encode_texts(train.s1), tokens.encode_texts(train.s2)
    order = np.random.default_rng(0).permutation(len(a))
    targets = torch.tensor(train.scores / 5.0, dtype=torch.float32)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    batches = []
    for k in range(warmup + steps):
        idx = order[(k * batch) % len(order):][:batch]
        if len(idx) < batch:
            idx = order[:batch]
        padded = tokens.pad([a[i] for i in idx] + [b[i] for i in idx])
        batches.append(({n: t.to(s.device) for n, t in padded.items()}, targets[idx].to(s.device)))
    losses = []

    def step(inputs, y):
        with torch.autocast(s.device, dtype=torch.bfloat16, enabled=s.cuda):
            pred = model(**inputs)
        loss = torch.nn.functional.mse_loss(pred.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    for inputs, y in batches[:warmup]:
        step(inputs, y)
    if s.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for inputs, y in batches[warmup:]:
        step(inputs, y)
    if s.cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    tail = torch.stack(losses[-min(20, steps):]).float().mean().item()
    real_tokens = sum(int(inp["attention_mask"].sum()) for inp, _ in batches[warmup:])
    return {"kernel": fused, "fused layers": fused_layers, "batch": batch, "steps": steps,
            "steps/s": steps / seconds, "tokens/s": real_tokens / seconds,
            "peak MiB above start": (torch.cuda.max_memory_allocated() - baseline) / 2**20 if s.cuda else float("nan"),
            "final loss": tail}


def part_train(s: Suite, p: Part) -> None:
    stsb = Path(s.args.stsb)
    train = _read(stsb / "sts-train.csv")
    plan = [(4, 2, 0, 24)] if s.smoke else [(16, 300, 20, 128), (128, 150, 10, 128)]  # batch, steps, warm-up, len
    for batch, steps, warmup, length in plan:
        pair = [_step_loop(s, mode, batch, steps, warmup, length, train) for mode in ("off", "on")]
        p.rows += pair
        off, on = pair
        if not on["fused layers"]:
            raise RuntimeError("the fused kernel was not swapped into the model (fused_kernel=on)")
        drift = abs(on["final loss"] - off["final loss"]) / max(abs(off["final loss"]), 1e-12)
        p.decide(f"batch {batch}: fused vs unfused steps/s", f"{on['steps/s'] / off['steps/s']:.2f}×, peak memory "
                 f"{on['peak MiB above start'] / off['peak MiB above start'] if s.cuda else float('nan'):.2f}×", None)
        p.decide(f"batch {batch}: final loss equal within 5% (bf16 on GPU)",
                 f"{on['final loss']:.4f} vs {off['final loss']:.4f} ({100 * drift:.1f}%)", bool(drift <= 0.05))
    gpus = torch.cuda.device_count() if s.cuda else 0
    if gpus > 1:
        p.figures["DDP"] = _ddp(s, gpus)
    else:
        p.figures["DDP"] = f"not run: {gpus} GPU(s) here (runs over all GPUs where more than one is present)"


def _ddp(s: Suite, gpus: int) -> str:
    """One epoch of the default recipe over every GPU, through the launcher users run."""
    out = s.work / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={gpus}",
           "--mixed_precision=bf16", str(REPO / "launch" / "train.py"), "--data", f"stsb:{s.args.stsb}",
           "--out", str(out), "--overwrite", "--epochs", "1", "--model", str(_model_folder(s))]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    took = time.perf_counter() - t
    if done.returncode:
        return f"failed (exit {done.returncode}): {' '.join(done.stderr.split()[-30:])}"
    dev = json.loads((out / "metrics.json").read_text()).get("best", {})
    return f"{gpus} GPUs, 1 epoch in {took:.0f} s (with start-up), dev {json.dumps(dev)[:160]}"


# -------------------------------------------------------------------------------------------- score
def _spearman(pred, gold) -> float:
    from toolkit.scoring.metrics import evaluate_predictions

    return 100 * evaluate_predictions(np.asarray(pred, dtype=np.float64), gold, ci=False)[0]["spearman"]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def part_score(s: Suite, p: Part) -> None:
    import toolkit.api as api
    from toolkit.artifacts.open_model import load_model

    stsb = Path(s.args.stsb)
    work = s.work / "score"
    data = {"train": stsb / "sts-train.csv", "dev": stsb / "sts-dev.csv"}
    if s.smoke:  # the first lines of each split
        (work / "data").mkdir(parents=True, exist_ok=True)
        for split, n in (("train", 48), ("dev", 64)):
            lines = (stsb / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
            data[split] = work / "data" / f"sts-{split}.csv"
            data[split].write_text("".join(lines), encoding="utf-8")
    length = 64 if s.smoke else 128
    _, took = _timed(lambda: api.train(train=str(data["train"]), dev=str(data["dev"]), out=str(work / "cross"),
                                       overwrite=True, base_model=str(_model_folder(s)), arch="cross",
                                       adapter="lora", epochs=1, batch_size=32, max_length=length,
                                       precision="bf16" if s.cuda else "no", log_steps=1000))
    p.figures["cross-encoder (LoRA, 1 epoch) trained in s"] = round(took, 1)
    merged = api.merge(str(work / "cross"), str(work / "merged"), overwrite=True)
    test = _read(stsb / "sts-test.csv")
    if s.smoke:
        test = type(test)(test.ids[:64], test.s1[:64], test.s2[:64], test.scores[:64], None, test.locs[:64])
    n = s.args.pairs or (64 if s.smoke else 200_000)
    reps = -(-n // len(test))
    s1, s2 = (test.s1 * reps)[:n], (test.s2[37:] + test.s2[:37]) * reps  # mixed pairs: not the test set's
    s2 = s2[:n]
    batches = [int(b) for b in str(s.args.score_batch).split(",")]
    reference = load_model(merged).predictor(batch_size=batches[0])
    ref_spearman = _spearman(reference.predict(test.s1, test.s2), test.scores)
    p.figures["fp32 PyTorch reference, STS-B test Spearman"] = round(ref_spearman, 2)
    p.figures["pairs scored per scorer"] = n
    scorers: list[tuple[str, Callable[[int], Callable]]] = []  # (label, batch size -> predict(s1, s2))
    import onnxruntime as ort

    cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    if cuda_ep or not s.cuda:
        provider = "cuda" if cuda_ep else "cpu"
        _, took = _timed(lambda: api.export(str(merged), str(work / "onnx-fp16"), fp16=True, provider=provider,
                                            overwrite=True))
        p.figures["fp16 bundle exported and verified in s"] = round(took, 1)
        bundle = load_model(work / "onnx-fp16", provider=provider)
        scorers.append((f"toolkit fp16 bundle, ORT {bundle.provider}",
                        lambda b: bundle.predictor(batch_size=b).predict))
    else:
        p.figures["ONNX Runtime CUDA provider"] = ("absent in this onnxruntime (a CPU build); onnxruntime-gpu "
                                                  "(247 MB) does not fit a device call's 64 MiB: fp16 bundle not "
                                                  "timed on the GPU")
    torch_dtype = torch.float16 if s.cuda else torch.float32
    dtype_name = str(torch_dtype).split(".")[-1]
    run = load_model(merged)
    run.model.to(torch_dtype)
    scorers.append((f"toolkit PyTorch engine, {dtype_name}",
                    lambda b: run.predictor(batch_size=b, device=s.device).predict))
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(merged / "model"), num_labels=1, activation_fn=torch.nn.Identity(), max_length=length,
                      device=s.device, local_files_only=True, model_kwargs={"torch_dtype": torch_dtype})
    ce_label = f"CrossEncoder.predict, {dtype_name}"
    scorers.append((ce_label, lambda b: lambda x, y: ce.predict(list(zip(x, y)), batch_size=b,
                                                                show_progress_bar=False)))
    for batch in batches:
        for label, make in scorers:
            fn = make(batch)
            fn(s1[:2000], s2[:2000])  # warm-up: CUDA context, kernels, allocator
            # the first pass meets each padded width for the first time (a length-sorted scorer meets
            # many); the second is what a long job runs at
            _, first = _timed(lambda fn=fn: fn(s1, s2))
            _, seconds = _timed(lambda fn=fn: fn(s1, s2))
            spearman = _spearman(fn(test.s1, test.s2), test.scores)
            p.rows.append({"scorer": label, "batch": batch, "pairs/s": n / seconds, "first pass pairs/s": n / first,
                           "test Spearman": spearman, "change vs fp32": spearman - ref_spearman})
            scorer = getattr(fn, "__self__", None)
            if hasattr(scorer, "encode"):  # where the time goes: tokenising vs padding + forward
                encoded, tokenise = _timed(lambda: scorer.encode(s1, s2))
                _, forward = _timed(lambda: scorer.score_encoded(encoded))
                p.figures[f"{label}, batch {batch}: tokenise / pad+forward s"] = f"{tokenise:.2f} / {forward:.2f}"
            s.log(f"score: {label}, batch {batch}: {n / seconds:.0f} pairs/s, Spearman {spearman:.2f}")
    ce_best = max((r for r in p.rows if r["scorer"] == ce_label), key=lambda r: r["pairs/s"])
    ours = max((r for r in p.rows if r["scorer"] != ce_label), key=lambda r: r["pairs/s"])
    for r in p.rows:
        r["x CrossEncoder (same batch)"] = r["pairs/s"] / next(
            c["pairs/s"] for c in p.rows if c["scorer"] == ce_label and c["batch"] == r["batch"])
    ratio = ours["pairs/s"] / ce_best["pairs/s"]
    p.decide(f"GPU scoring ≥ {SCORE_SPEEDUP}× CrossEncoder {dtype_name} (each at its best batch)",
             f"{ratio:.2f}× ({ours['scorer']}, batch {ours['batch']}, vs batch {ce_best['batch']})",
             None if s.smoke else bool(ratio >= SCORE_SPEEDUP))
    drop = -ours["change vs fp32"]
    p.decide(f"Spearman loss ≤ {SCORE_MAX_DROP}", f"{drop:+.2f} points", bool(drop <= SCORE_MAX_DROP))


# ------------------------------------------------------------------------------------------ prepare
def prepare(folder: Path) -> None:
    """What a device call carries: STS-B and the base model with fp16 weights (see the docstring)."""
    from safetensors.torch import load_file, save_file

    from toolkit.model.safe_loading import resolve_model

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(STSB, folder / "stsb", dirs_exist_ok=True)
    src = resolve_model("all-MiniLM-L6-v2")[1]
    dst = folder / "minilm"
    dst.mkdir(exist_ok=True)
    for name in MODEL_FILES:
        if name == "model.safetensors":
            weights = {k: v.half() if v.is_floating_point() else v for k, v in load_file(src / name).items()}
            save_file(weights, dst / name, metadata={"format": "pt"})
        else:
            shutil.copy(src / name, dst / name)
    config = json.loads((dst / "config.json").read_text())
    config["torch_dtype"] = "float32"  # the weights are stored in fp16 only to travel; load as float32
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{folder}: STS-B and all-MiniLM-L6-v2 (fp16 weights), {size / 2**20:.1f} MiB")
    wheels = REPO / ".whl"
    if wheels.is_dir():  # the GPU image has the rest (torch, triton, accelerate, ...) in usable versions
        for wheel in wheels.glob("*.whl"):
            if wheel.name.split("-")[0].lower() not in WHEELS:
                wheel.unlink()
        kept = sum(f.stat().st_size for f in wheels.glob("*.whl"))
        print(f"{wheels}: {', '.join(sorted(f.name for f in wheels.glob('*.whl')))}; {kept / 2**20:.1f} MiB")
        if size + kept > 62 * 2**20:
            print("warning: .gpu + .whl come near the 64 MiB a device call carries", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for results.md, results.json and suite.log")
    ap.add_argument("--smoke", action="store_true", help="every part on the CPU at tiny sizes (TRITON_INTERPRET=1)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="base model: short name or local folder")
    ap.add_argument("--stsb", default=str(STSB), help="STS Benchmark folder")
    ap.add_argument("--pairs", type=int, default=0, help="pairs per scorer (default 200000; smoke 64)")
    ap.add_argument("--score-batch", default="1024", help="pairs per forward, every scorer (comma-separated)")
    ap.add_argument("--work", help="working folder (trained runs, bundles; default: a new temporary one)")
    ap.add_argument("--prepare", metavar="DIR", help="write what a device call carries into DIR, and stop")
    args = ap.parse_args()
    if args.prepare:
        prepare(Path(args.prepare))
        return 0
    if not args.out:
        ap.error("--out is required")
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not torch.cuda.is_available() and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        ap.error("no CUDA GPU here: run with --smoke and TRITON_INTERPRET=1 (the kernel in Triton's interpreter)")
    s = Suite(args)
    for name in PARTS:
        if name in args.parts.split(","):
            s.run(name, lambda p, fn=globals()[f"part_{name}"]: fn(s, p))
    print(s.markdown())
    with contextlib.suppress(OSError):
        if not args.work:
            shutil.rmtree(s.work)
    return 0 if all(p.status == "ok" for p in s.parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
