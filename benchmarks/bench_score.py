"""CPU scoring at the limit: ``toolkit score``'s graphs against OpenVINO and PyTorch, and the roofline.

    python benchmarks/bench_score.py --run runs/b17/cross-lora-merged --run runs/b17/bi-seq_bn \
        --out runs/bench-score

For each run (a run directory or a merged folder; a cross-encoder and a bi-encoder), on the same pairs
(derived from STS-B test: its 1379 pairs, then first sentences paired with other test sentences),
threads and batch size:
- PyTorch eager (tokenizer + model, batch 64, file order): the × eager base;
- ``toolkit score`` (Parquet in, Parquet out) with a bundle of each graph candidate: attention plain
  (dynamo exporter) or fused (TorchScript exporter + ONNX Runtime's Attention fusion), fp32 and int8
  (a candidate the model does not fuse falls back to plain and is left out), with its time split;
- OpenVINO on the same network (the standard-ops ONNX export), fp32 and NNCF static int8
  (transformer preset, calibrated on the pairs file's first rows), in its own virtual environment
  (``openvino_peer.py``; created with pinned versions at ``--openvino-venv`` if missing);
- optionally (``--parts``): sentence-transformers CrossEncoder (cross only), the Ray engine, peak RSS.
Each timed row is the median of ``--repeats`` runs after a warm-up (PyTorch eager: one run), and its
Spearman is that scorer's on STS-B test. Then the roofline (``roofline.py``): multiply-accumulates per
pair at the measured lengths against this CPU's measured fp32 and int8 GEMM peaks; and the time split
of the default int8 bundle of the first run scoring ``--split-pairs`` pairs in one ``toolkit score``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from statistics import median

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import roofline  # noqa: E402
from machine_info import cpu_info  # noqa: E402
from toolkit.scoring import openvino_engine  # noqa: E402
from toolkit.scoring.onnx_bundle import Bundle  # noqa: E402
from toolkit.common.errors import ToolkitError  # noqa: E402
from toolkit.artifacts.onnx_export import ExportConfig, export_graph, export_onnx, open_source  # noqa: E402
from toolkit.artifacts.open_model import load_model  # noqa: E402
from toolkit.scoring.metrics import evaluate_predictions  # noqa: E402
from toolkit.batch.config import ScoreConfig  # noqa: E402
from toolkit.batch.stream import score_file  # noqa: E402
from toolkit.sources import Columns, SourceOptions, read_pairs  # noqa: E402

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"
HERE = Path(__file__).resolve().parent
OPENVINO_PINS = ("openvino==2026.4.1", "nncf==3.4.0")
PARTS = ("eager", "toolkit", "openvino", "roofline", "split", "ce", "ray", "rss")
DEFAULT_PARTS = ("eager", "toolkit", "openvino", "roofline", "split")


def write_pairs(path: Path, s1: list[str], s2: list[str], n: int) -> None:
    m = len(s1)
    ids = [f"p{i}" for i in range(n)]
    a = [s1[i % m] for i in range(n)]
    b = [s2[(i + 97 * (i // m)) % m] for i in range(n)]
    pq.write_table(pa.table({"id": ids, "sentence1": a, "sentence2": b}), path, row_group_size=8192)


def eager(run, s1: list[str], s2: list[str], batch_size: int) -> np.ndarray:
    """The loop users write first: tokenizer + model per batch, in file order, every sentence encoded."""
    tok, model, arch = run.tokens.tokenizer, run.model.eval(), run.tokens.arch
    kw = dict(padding=True, truncation=True, max_length=run.tokens.max_length, return_tensors="pt")
    out = []
    with torch.inference_mode():
        for i in range(0, len(s1), batch_size):
            a, b = s1[i:i + batch_size], s2[i:i + batch_size]
            if arch == "cross":
                out.append(model(**tok(a, b, **kw)).numpy())
            else:
                ea, eb = model.embed(**tok(a, **kw)), model.embed(**tok(b, **kw))
                out.append(torch.nn.functional.cosine_similarity(ea, eb).numpy())
    return np.concatenate(out)


def spearman(pred, gold) -> float:
    return 100 * evaluate_predictions(np.asarray(pred, dtype=np.float64), gold, ci=False)[0]["spearman"]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def gated_bundle(source: str, path: Path, cfg: ExportConfig, tag: str = "") -> Path | str:
    """``source`` exported to ``path`` once (kept for later runs), or why the export gate refused it
    (kept beside it in PATH.refused, so a refused export is not tried again)."""
    refused = path.with_name(path.name + ".refused")
    if refused.exists():
        return refused.read_text().strip()
    if not (path / "metadata.json").exists():
        try:
            export_onnx(source, path, cfg, overwrite=True, say=lambda line: print(f"  {tag}{line}", file=sys.stderr))
        except ToolkitError as e:
            refused.write_text(str(e))
            return str(e)
    return path


def openvino_python(venv: Path) -> Path:
    """OpenVINO's own environment, with the toolkit's own tokenizers/onnxruntime/pyarrow/numpy versions."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        same = [f"{p}=={version(p)}" for p in ("tokenizers", "onnxruntime", "onnx", "pyarrow", "numpy")]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *OPENVINO_PINS, *same], check=True)
    return python


class Bench:
    """One run's rows."""

    def __init__(self, run_dir: str, args, out: Path, data: Path, test_file: Path, test):
        self.run_dir, self.args, self.out, self.data = run_dir, args, out, data
        self.test_file, self.test = test_file, test
        self.run = load_model(run_dir)
        self.arch = self.run.tokens.arch
        self.name = Path(run_dir).name
        self.rows: list[dict] = []
        table = pq.read_table(data)
        self.s1, self.s2 = table.column("sentence1").to_pylist(), table.column("sentence2").to_pylist()
        self.options = SourceOptions(columns=Columns(id_col="id"), need_score=False)

    def say(self, row: dict) -> None:
        self.rows.append(row)
        print(f"[{self.name}] {row['scorer']}: {row.get('pairs_per_s', 0):.0f} pairs/s, "
              f"test Spearman {row.get('test_spearman', float('nan')):.2f}", file=sys.stderr, flush=True)

    def eager_row(self) -> None:
        a = self.args
        eager(self.run, self.s1[:128], self.s2[:128], a.batch_size)
        seconds = timed(lambda: eager(self.run, self.s1, self.s2, a.batch_size), 1)
        self.say({"scorer": "PyTorch eager (tokenizer + model, file order)", "kind": "eager",
                  "pairs_per_s": len(self.s1) / seconds,
                  "test_spearman": spearman(eager(self.run, self.test.s1, self.test.s2, a.batch_size),
                                            self.test.scores)})

    def bundle(self, attention: str, variant: str) -> Path | str:
        """The bundle of one candidate graph (exported once), or why there is none: the model does not
        fuse, or the export gate refused it."""
        path = gated_bundle(self.run_dir, self.out / f"{self.name}-{attention}-{variant}",
                            ExportConfig(attention=attention, quantize="int8" if variant == "int8" else None,
                                         verify_data=str(STSB / "sts-dev.csv"), threads=self.args.threads))
        if isinstance(path, str):
            return path
        meta = json.loads((path / "metadata.json").read_text())
        if meta["graph"]["attention"] != attention:
            return "attention is not fused in this model (the export fell back to plain ops)"
        return path

    def default_int8(self) -> Path:
        bundle = self.bundle(ExportConfig(quantize="int8").attention_for(self.arch), "int8")
        if isinstance(bundle, str):
            raise SystemExit(f"{self.run_dir}: no default int8 bundle: {bundle}")
        return bundle

    def toolkit_rows(self) -> None:
        """``toolkit score`` on each graph candidate and engine: ONNX Runtime on every bundle, OpenVINO (bf16
        where the CPU has it, else f32; throughput hint) on the fp32 bundle, and what ``--runtime auto`` chose
        for the fp32 and the default int8 bundle (its measurement kept out of the timing: it runs once per
        machine, before the warm-up)."""
        a = self.args
        ov = [("openvino", "fp32", "plain")] if openvino_engine.available() else []
        for runtime, variant, attention in [("onnxruntime", v, att) for v in ("fp32", "int8")
                                            for att in ("plain", "fused")] + ov + \
                [("auto", "fp32", "plain"), ("auto", "int8", ExportConfig(quantize="int8").attention_for(self.arch))]:
            name = f"toolkit score --runtime {runtime}, {variant} bundle, attention {attention}"
            bundle = self.bundle(attention, variant)
            if isinstance(bundle, str):
                print(f"[{self.name}] {name}: {bundle}", file=sys.stderr)
                self.rows.append({"scorer": name, "kind": "none", "why": bundle})
                continue
            meta = json.loads((bundle / "metadata.json").read_text())
            cfg = ScoreConfig(threads=a.threads, batch_size=a.batch_size, restart=True, progress=False,
                              runtime=runtime)
            summaries, said = [], []
            score_file(str(bundle), str(self.test_file), str(self.out / "warm.parquet"), self.options, cfg,
                       say=said.append)
            seconds = timed(lambda: summaries.append(score_file(str(bundle), str(self.data),
                                                                str(self.out / "scores.parquet"),
                                                                self.options, cfg)), a.repeats)
            summary = sorted(summaries, key=lambda s: s.seconds)[len(summaries) // 2]
            score_file(str(bundle), str(self.test_file), str(self.out / "test.parquet"), self.options, cfg)
            test_scores = pq.read_table(self.out / "test.parquet").column("score").to_numpy()
            if runtime == "auto":
                name += f" (chose {summary.backend})"
            self.say({"scorer": name, "kind": "toolkit", "runtime": runtime, "variant": variant,
                      "attention": attention, "bundle": str(bundle), "backend": summary.backend, "choice": said,
                      "default": runtime == "auto" and variant == "int8",
                      "pairs_per_s": len(self.s1) / seconds, "timing": summary.timing, "wall_s": summary.seconds,
                      "test_spearman": spearman(test_scores, self.test.scores),
                      "ops": meta["fused_operators"]})

    def openvino_rows(self) -> None:
        a = self.args
        python = openvino_python(Path(a.openvino_venv))
        raw = self.out / f"{self.name}-standard-ops.onnx"
        if not raw.exists():
            export_graph(self.source, raw, 18, "dynamo")
        fp32 = self.bundle("plain", "fp32")
        for precision in ("fp32", "int8"):
            runs = []
            for _ in range(a.repeats):
                result = self.out / f"openvino-{self.name}-{precision}.json"
                subprocess.run([str(python), str(HERE / "openvino_peer.py"), str(fp32), str(raw), "--precision",
                                precision, "--pairs", str(self.data), "--test", str(self.test_file), "--threads",
                                str(a.threads), "--batch-size", str(a.batch_size), "--out", str(result)], check=True)
                runs.append(json.loads(result.read_text()))
            got = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
            label = (f"defaults (runs {got['inference_precision']})" if precision == "fp32"
                     else "int8 (NNCF static, transformer preset)")
            self.say({"scorer": f"OpenVINO {got['openvino'].split('-')[0]} {label}", "kind": "openvino",
                      "variant": precision, "pairs_per_s": got["pairs_per_s"],
                      "inference_precision": got["inference_precision"],
                      "test_spearman": spearman(got["test_normalized"], self.test.scores)})

    def crossencoder_rows(self) -> None:
        from sentence_transformers import CrossEncoder

        if self.arch != "cross" or not (Path(self.run_dir) / "model").is_dir():
            return  # CrossEncoder loads a merged folder's transformers model
        for backend in ("torch", "onnx"):
            try:
                ce = CrossEncoder(str(Path(self.run_dir) / "model"), num_labels=1, backend=backend,
                                  activation_fn=torch.nn.Identity(), max_length=self.run.tokens.max_length,
                                  local_files_only=True)
            except Exception as e:  # report why a backend does not run here, then go on
                print(f"CrossEncoder backend={backend}: did not run ({type(e).__name__}: {str(e).splitlines()[0]})",
                      file=sys.stderr)
                continue
            b = self.args.batch_size
            seconds = timed(lambda c=ce: c.predict(list(zip(self.s1, self.s2)), batch_size=b,
                                                   show_progress_bar=False), self.args.repeats)
            pred = ce.predict(list(zip(self.test.s1, self.test.s2)), batch_size=b, show_progress_bar=False)
            self.say({"scorer": f"CrossEncoder.predict, backend={backend}", "kind": "ce",
                      "pairs_per_s": len(self.s1) / seconds, "test_spearman": spearman(pred, self.test.scores)})

    def ray_row(self) -> None:
        import ray

        from toolkit.batch.ray_engine import RayConfig, score_ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        cfg = ScoreConfig(threads=1, batch_size=self.args.batch_size, restart=True, progress=False)
        bundle = self.default_int8()
        seconds = timed(lambda: score_ray(str(bundle), str(self.data), str(self.out / "scores-ray"), self.options,
                                          cfg, RayConfig()), 1)
        score_ray(str(bundle), str(self.test_file), str(self.out / "test-ray"), self.options, cfg, RayConfig())
        got = {r["id"]: r["score"] for r in pads.dataset(str(self.out / "test-ray")).to_table().to_pylist()}
        ray.shutdown()
        self.say({"scorer": f"toolkit score --engine ray, int8 ({os.cpu_count()} actors x 1 thread, local Ray)",
                  "kind": "ray", "pairs_per_s": len(self.s1) / seconds,
                  "test_spearman": spearman([got[i] for i in self.test.ids], self.test.scores)})

    @cached_property
    def source(self):
        """The run as the exporter opens it (loaded once: the OpenVINO graph and the roofline read it)."""
        return open_source(self.run_dir)

    def work(self) -> dict:
        """Multiply-accumulates of the pairs file as the bundle encodes it (per part: distinct sentences of
        a bi-encoder once), and the mean length."""
        bundle = Bundle.load(self.bundle("plain", "fp32"), threads=self.args.threads)
        hf = self.source.hf_config
        width = roofline.adapter_width(bundle.metadata, hf.hidden_size)
        lengths: list[int] = []
        for k in range(0, len(self.s1), 8192):
            lengths += [len(e) for e in bundle.encode(self.s1[k:k + 8192], self.s2[k:k + 8192]).items]
        macs = roofline.macs_of(lengths, hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, width)
        return {"macs_per_pair": macs / len(self.s1), "mean_length": float(np.mean(lengths)),
                "items_per_pair": len(lengths) / len(self.s1)}


def table(bench: Bench) -> list[str]:
    rows = bench.rows
    base = next((r for r in rows if r["kind"] == "eager"), next(r for r in rows if r["kind"] != "none"))
    ov = [r for r in rows if r["kind"] == "openvino"]
    ov_best = max(ov, key=lambda r: r["pairs_per_s"]) if ov else None
    lines = [f"**{bench.name}** ({bench.arch}), {len(bench.s1)} pairs",
             "| scorer | pairs/s | × eager | × OpenVINO best | STS-B test Spearman | change |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["kind"] == "none":
            lines.append(f"| {r['scorer']} | none: {r['why'][:150]} | | | | |")
            continue
        name = f"**{r['scorer']}** (default)" if r.get("default") else r["scorer"]
        vs_ov = f"{r['pairs_per_s'] / ov_best['pairs_per_s']:.2f}" if ov_best else "-"
        lines.append(f"| {name} | {r['pairs_per_s']:.0f} | {r['pairs_per_s'] / base['pairs_per_s']:.2f} | {vs_ov} | "
                     f"{r['test_spearman']:.2f} | {r['test_spearman'] - base['test_spearman']:+.2f} |")
    return lines


def roofline_lines(benches: list[Bench], peaks: dict) -> list[str]:
    lines = ["| bundle | MMACs/pair (mean length) | pairs/s | GMAC/s (wall) | GMAC/s (inference only) | "
             "% of GEMM peak (wall / inference) |", "|---|---:|---:|---:|---:|---:|"]
    for bench in benches:
        work = bench.work()
        for r in (r for r in bench.rows if r["kind"] == "toolkit" and r["runtime"] == "onnxruntime"):
            wall = work["macs_per_pair"] * r["pairs_per_s"]
            infer = work["macs_per_pair"] * len(bench.s1) / r["timing"]["run"]
            peak = peaks[r["variant"]]["peak"]
            shape = f"{work['mean_length']:.1f} tokens x {work['items_per_pair']:.2f}"
            lines.append(f"| {bench.name} {r['variant']} {r['attention']} | {work['macs_per_pair'] / 1e6:.0f} "
                         f"({shape}) | {r['pairs_per_s']:.0f} | {wall / 1e9:.1f} | {infer / 1e9:.1f} | "
                         f"{100 * wall / peak:.0f}% / {100 * infer / peak:.0f}% |")
    return lines


def split_lines(bench: Bench, n: int, out: Path, args) -> list[str]:
    """``toolkit score`` with the default int8 bundle over ``n`` pairs, one run: where the time goes."""
    path = out / f"pairs-{n}.parquet"
    if not path.exists():
        write_pairs(path, bench.test.s1, bench.test.s2, n)
    bundle = bench.default_int8()
    cfg = ScoreConfig(threads=args.threads, batch_size=args.batch_size, restart=True, progress=False)
    summary = score_file(str(bundle), str(path), str(out / f"scores-{n}.parquet"), bench.options, cfg)
    shares = ", ".join(f"{k} {v:.1f}s ({100 * v / summary.seconds:.0f}%)" for k, v in summary.timing.items())
    return [f"{bench.name} int8 (default graph), {n} pairs: {summary.seconds:.0f}s wall, {summary.rate:.0f} pairs/s; "
            f"{shares}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", help="a run or merged folder (repeat: one cross-, one bi-encoder)")
    ap.add_argument("--out", default="runs/bench-score")
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--split-pairs", type=int, default=1000000)
    ap.add_argument("--rss-pairs", type=int, nargs=2, default=[50000, 1000000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--openvino-venv", default="runs/openvino-venv")
    ap.add_argument("--parts", nargs="*", default=list(DEFAULT_PARTS), choices=PARTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test, _ = read_pairs(STSB / "sts-test.csv", SourceOptions())
    data = out / f"pairs-{args.pairs}.parquet"
    if not data.exists():
        write_pairs(data, test.s1, test.s2, args.pairs)
    test_file = out / "test-pairs.parquet"
    pq.write_table(pa.table({"id": test.ids, "sentence1": test.s1, "sentence2": test.s2}), test_file)

    machine = (f"{cpu_info()}; torch {torch.__version__}, onnxruntime {version('onnxruntime')}, "
               f"{args.threads} threads, batch {args.batch_size}, {date.today()}")
    report = [f"Machine: {machine}", ""]
    benches = []
    for run_dir in args.run or ["runs/b17/cross-lora-merged"]:
        bench = Bench(run_dir, args, out, data, test_file, test)
        for part, fn in (("eager", bench.eager_row), ("ce", bench.crossencoder_rows), ("toolkit", bench.toolkit_rows),
                         ("openvino", bench.openvino_rows), ("ray", bench.ray_row)):
            if part in args.parts:
                fn()
        benches.append(bench)
        report += table(bench) + [""]
        print("\n".join(table(bench)), file=sys.stderr, flush=True)  # kept should a later part fail
        (out / "results.json").write_text(json.dumps({"machine": machine, "runs": {b.name: b.rows for b in benches}},
                                                     indent=1))
    results = {"machine": machine, "runs": {b.name: b.rows for b in benches}}
    if "roofline" in args.parts:
        peaks = roofline.gemm_peaks(args.threads)
        results["gemm_peaks"] = peaks
        report += [f"GEMM peak through ONNX Runtime ({args.threads} threads): "
                   + ", ".join(f"{p} {v['peak'] / 1e9:.1f} GMAC/s" for p, v in peaks.items()), ""]
        report += roofline_lines(benches, peaks) + [""]
    if "split" in args.parts:
        report += split_lines(benches[0], args.split_pairs, out, args)
    for bench in benches:
        for r in (r for r in bench.rows if r["kind"] == "toolkit"):
            report.append(f"{bench.name} {r['backend']}, attention {r['attention']}: time split "
                          + ", ".join(f"{k} {100 * v / r['wall_s']:.0f}%" for k, v in r["timing"].items()))
    if "rss" in args.parts:
        report += rss_lines(benches[0], out, args)
    print("\n".join(report))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def rss_lines(bench: Bench, out: Path, args) -> list[str]:
    """Peak RSS of ``toolkit score`` (int8) in a subprocess at two file sizes (VmHWM, not getrusage's
    ru_maxrss: that one keeps this large parent's RSS across fork+exec)."""
    lines = []
    bundle = bench.default_int8()
    for n in args.rss_pairs:
        path = out / f"pairs-{n}.parquet"
        if not path.exists():
            write_pairs(path, bench.test.s1, bench.test.s2, n)
        cmd = [sys.executable, "-c",
               "import sys; from toolkit.cli import main; rc = main(sys.argv[1:]); "
               "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr); "
               "sys.exit(rc)",
               "score", str(bundle), str(path), "-o", str(out / f"rss-{n}.parquet"), "--id-col", "id",
               "--threads", str(args.threads), "--restart", "--quiet"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        lines.append(f"peak RSS, toolkit score int8, {n} pairs: {int(proc.stderr.strip().splitlines()[-1]) / 1024:.0f} "
                     f"MiB ({time.perf_counter() - t:.0f}s)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
