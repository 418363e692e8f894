"""Every command end to end through the CLI's entry point (in processes of their own where start-up is
what is checked: training's console, the one-line errors), and clean one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_here

TOOLKIT = [sys.executable, "-m", "toolkit.cli"]


def toolkit(*args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*TOOLKIT, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"toolkit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_check_stsb_release(stsb_dir):
    out = toolkit("check", stsb_dir / "sts-train.csv").stdout
    assert "STS-B release layout" in out and "5749 rows, 5749 good, 0 with problems" in out
    assert "main-captions 2000, main-forum 450, main-news 3299" in out


def test_check_lists_every_problem(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sentence1,sentence2,score\na,b,1\n,b,2\na,b,x\na,b,9\n")
    proc = toolkit("check", path, "--score-range", "0:5", check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[:3] == [f"{path}:3: empty sentence1", f"{path}:4: score 'x' is not a number",
                                            f"{path}:5: score 9 outside the declared range 0..5"]
    assert "4 rows, 1 good, 3 with problems" in proc.stdout


TRAIN_BAD = ["train", "--data", "{tmp}/bad.csv", "--out", "{tmp}/run"]


@pytest.mark.parametrize("args,expected", [
    (["check", "{tmp}/missing.csv"], "{tmp}/missing.csv: no such file"),
    (TRAIN_BAD, "{tmp}/bad.csv:3: empty sentence2"),
    (["eval", "{tmp}/norun", "--data", "{tmp}/bad.csv"],
     "{tmp}/norun: not a run directory, merged folder or ONNX bundle (no such folder); train one with "
     "`toolkit train`"),
    (["train", "--data", "stsb:{tmp}/nowhere", "--out", "{tmp}/run"],
     "{tmp}/nowhere: no such folder (--data stsb:{tmp}/nowhere)"),
    (TRAIN_BAD + ["--model", "org/model"], "model 'org/model' is neither a known short name (all-minilm-l6-v2, "
     "minilm-l6, all-mpnet-base-v2, mpnet-base) nor a local folder; toolkit loads models offline only"),
])
def test_errors_are_one_line_without_traceback(tmp_path, args, expected):
    (tmp_path / "bad.csv").write_text("sentence1,sentence2,score\na,b,1\nc,,2\n")
    proc = toolkit(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == expected.format(tmp=tmp_path)
    assert "Traceback" not in proc.stderr


def test_train_eval_predict_end_to_end(tmp_path, stsb_dir, small_stsb, capsys):
    """train in a process of its own (its console as a user sees it: no library's start-up warnings), then
    eval and predict on the run through the same entry point in this process."""
    run = tmp_path / "run"
    proc = toolkit("train", "--data", f"stsb:{stsb_dir}", "--limit", "120", "--epochs", "1", "--max-length", "64",
                   "--out", run)
    assert "parameters trainable" in proc.stderr + proc.stdout
    assert "1 process, device cpu, fp32" in proc.stdout + proc.stderr  # no library's own warnings (DeepSpeed's on CPUs)
    assert "WARNING" not in proc.stderr, proc.stderr[:2000]
    for name in ("config.json", "metrics.json", "train.log", "train_log.jsonl", "adapter/adapter.safetensors"):
        assert (run / name).is_file(), name
    proc = cli_here(capsys, "eval", run, "--data", small_stsb["test"], "--json", tmp_path / "m.json",
                    "--plot", tmp_path / "m.png")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"n", "mse", "rmse", "mae", "pearson", "spearman"} <= set(metrics)
    assert metrics["n"] == 80 and 0 < metrics["spearman"] <= 1 and set(metrics["groups"]) == {"main-captions"}
    assert f"spearman={100 * metrics['spearman']:.2f}" in proc.stdout
    assert Path(tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "with_bad_rows.tsv"
    lines = small_stsb["test"].read_text().splitlines()[:30]
    broken = ["main-news\tf\t2012\t1\t2.0\t\tempty first", "only\ttwo"]
    bad.write_text("\n".join(lines[:10] + broken + lines[10:]) + "\n")
    proc = cli_here(capsys, "eval", run, "--data", bad, "--skip-bad-rows", "--json", tmp_path / "skip.json")
    assert f"{bad}: skipped 2 bad rows of 32, kept 30; first: {bad}:11: empty sentence1" in proc.stderr
    assert json.loads((tmp_path / "skip.json").read_text())["n"] == 30
    score = float(cli_here(capsys, "predict", run, "A plane is taking off.", "An air plane is taking off.").stdout)
    low = float(cli_here(capsys, "predict", run, "A plane is taking off.", "A woman is slicing an onion.").stdout)
    assert 3.5 < score <= 5.5 and low < score


def test_train_with_files_and_other_formats(tmp_path):
    from conftest import dict_rows, write_pairs

    from toolkit.model.safe_loading import resolve_model

    train = write_pairs(tmp_path / "train.parquet",
                        [{**r, "pid": f"t{i}"} for i, r in enumerate(dict_rows("train", 64))])
    dev = write_pairs(tmp_path / "dev.jsonl", [{**r, "pid": f"d{i}"} for i, r in enumerate(dict_rows("dev", 32))])
    run = tmp_path / "lora"
    toolkit("train", "--train", train, "--dev", dev, "--adapter", "lora", "--arch", "cross", "--epochs", "1",
            "--id-col", "pid", "--group-col", "genre", "--max-length", "64", "--out", run,
            "--model", resolve_model("minilm-l6")[1])  # a model given as a local folder
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["adapter"] == "lora" and config["labels"]["kind"] == "zscore"
    assert config["base_model"]["name"] == str(resolve_model("minilm-l6")[1])
    proc = toolkit("eval", run, "--data", dev, "--group-col", "genre")
    assert "main-captions" in proc.stdout


# -- the CLI is generated from api.py's functions and the config dataclasses -----------------------------
def _print_config(*args) -> str:
    """What ``--print-config`` writes (in this process: the parser is what is tested, not start-up)."""
    import contextlib
    import io

    from toolkit.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*map(str, args), "--print-config"]) == 0
    return out.getvalue()


def _resolved(*args) -> dict:
    """The options a command line resolves to, as ``--print-config`` writes them."""
    import yaml

    return yaml.safe_load(_print_config(*args))


@pytest.mark.parametrize("command", ["check", "train", "eval", "predict", "merge", "export", "score", "wise",
                                     "shift-splits"])
def test_each_option_is_defined_once_and_documented(command, capsys):
    """No two of a command's parameters and config fields share a name (so a flag, a YAML key and a
    keyword argument each mean one thing), every one is in --help, and each parameter is documented."""
    import inspect

    import docstring_parser

    from toolkit import api, cli, options

    func = getattr(api, cli.COMMANDS[command].function)
    own = [p.name for p in inspect.signature(func).parameters.values()
           if p.kind is not p.VAR_KEYWORD and p.name != "say" and p.name not in options.CONFIG_PARAMS.values()]
    names = own + options.option_names(cli.COMMANDS[command].function)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(own) <= {p.arg_name for p in docstring_parser.parse(func.__doc__).params}
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for cls in options.option_classes(cli.COMMANDS[command].function):
        for f in options._leaves(cls):
            flag = "--" + f.name.replace("_", "-")
            assert flag in help_text, flag


def test_config_file_round_trip_and_command_line_precedence(tmp_path):
    args = ["train", "--data", "stsb:d", "--out", "runs/x", "--adapter", "lora", "--lora-r", "4", "--epochs", "2",
            "--score-range", "0:5", "--s1-col", "a", "--no-group-by-length", "--patience", "0"]
    resolved = _resolved(*args)
    assert resolved["adapter"] == "lora" and resolved["lora_r"] == 4 and resolved["score_range"] == [0.0, 5.0]
    assert resolved["s1_col"] == "a" and resolved["group_by_length"] is False and resolved["patience"] == 0
    assert resolved["lr"] is None and resolved["seed"] == 42  # untouched: TrainConfig's defaults
    config = tmp_path / "train.yaml"
    config.write_text(_print_config(*args))
    assert _resolved("train", "--config", config) == resolved
    assert _resolved("train", "--config", config, "--epochs", "7")["epochs"] == 7  # the command line wins
    config.write_text("epochs: 3\nlora-r: 2\nlr: 1e-3\n")  # hand-written: any subset, either spelling, YAML's 1e-3
    partial = _resolved("train", "--config", config, "--out", "o")
    assert (partial["epochs"], partial["lora_r"], partial["adapter"], partial["lr"]) == (3, 2, "seq_bn", 1e-3)


def test_config_file_for_a_command_with_positionals_and_spelled_values(tmp_path):
    config = tmp_path / "score.yaml"  # score's positional `model` shares its name with the model options' group
    config.write_text("batch_size: 32\nshard: 2/5\nscore_range: '0:5'\n")  # written as on the command line
    resolved = _resolved("score", "bundle", "pairs.csv", "-o", "out.parquet", "--config", config)
    assert (resolved["model"], resolved["data"], resolved["out"]) == ("bundle", "pairs.csv", "out.parquet")
    assert (resolved["batch_size"], resolved["shard"], resolved["score_range"]) == (32, [2, 5], [0.0, 5.0])


@pytest.mark.parametrize("command", ["train", "score", "wise", "search", "distill"])
def test_help_shows_no_none_and_one_default(command, capsys):
    from toolkit import cli

    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "None" not in text and "(default: )" not in text  # tyro's {None}|STR and (default: None)
    assert "(default: library's) (default" not in text


def test_config_classes_know_nothing_of_the_cli_library():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "toolkit"
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "tyro" in ast.dump(n)
                          for n in ast.walk(ast.parse(p.read_text()))))
    assert users == ["cli.py"]


@pytest.mark.parametrize("text,expected", [
    ("epochz: 3\n", "{path}: unknown option 'epochz'; valid: "),
    ("- 1\n- 2\n", "{path}: expected a mapping of option: value, got [1, 2]"),
    ("epochs: [\n", "{path}: cannot read the config file (while parsing"),
    ("epochs: abc\n", "{path}: epochs='abc': expected int"),
    ("arch: tri\n", "{path}: arch='tri': expected one of 'bi', 'cross'"),
    ("out: 3\n", "{path}: out=3: expected str or None"),
])
def test_bad_config_file_is_one_line(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    proc = toolkit("train", "--config", path, "--out", "o", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(expected.format(path=path)), proc.stderr


@pytest.mark.parametrize("old,new", [
    (["check", "f.csv", "--skip-bad-rows", "--no-score"], ["check", "f.csv", "--policy", "skip", "--no-gold"]),
    (["score", "m", "f.csv", "-o", "out.parquet", "--quiet"], ["score", "m", "f.csv", "--out", "out.parquet",
                                                               "--no-progress"]),
    (["export", "run", "--onnx", "--out", "b"], ["export", "run", "--out", "b", "--format", "onnx"]),
    (["export", "run", "--sentence-transformers", "--out", "b"],
     ["export", "run", "--out", "b", "--format", "sentence-transformers"]),
    (["train", "--model", "minilm-l6", "--out", "o"], ["train", "--base-model", "minilm-l6", "--out", "o"]),
    (["wise", "r", "--out", "o", "--ood", "a=x.csv", "--ood", "y.csv", "--alphas", "0:1:0.5"],
     ["wise", "r", "--out", "o", "--ood", "a=x.csv", "--ood", "y.csv", "--alphas", "0,0.5,1"]),
])
def test_earlier_spellings_resolve_to_the_same_options(old, new):
    assert _resolved(*old) == _resolved(*new)


@pytest.mark.parametrize("args,expected", [
    (["train", "--data", "d", "--bogus"], "toolkit train: Unrecognized options: --bogus"),
    (["train", "--data", "d", "--epochs", "x"], "toolkit train: Error parsing --epochs: invalid literal for int()"),
    (["score", "m", "f.csv", "-o", "x.csv", "--runtime", "tpu\nx"], "toolkit score: invalid choice 'tpu x'"),
    (["score", "m", "f.csv", "-o", "x.csv", "--runtime", "tpu\x1b[31m"],
     "toolkit score: invalid choice 'tpu\\x1b[31m'"),
    (["eval", "m"], "toolkit eval: Missing from toolkit eval"),
])
def test_usage_errors_are_one_line_like_the_others(args, expected):
    """tyro draws its parse errors in a multi-line box; the CLI says them in one line like its own."""
    proc = toolkit(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(expected) and proc.stderr.rstrip().endswith("--help: its options)"), proc.stderr
    assert not set("╭╮╰╯│") & set(proc.stderr)


@pytest.mark.parametrize("command", ["train", "search", "distill"])
def test_training_commands_read_their_options_without_torch(command, tmp_path):
    """Their --help and option errors come before the model stack, whose imports take seconds."""
    (tmp_path / "c.yaml").write_text("epochs: abc\n")
    proc = subprocess.run([*TOOLKIT, command, "--config", str(tmp_path / "c.yaml"), "--out", "o"],
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    said = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and said == [f"{tmp_path / 'c.yaml'}: epochs='abc': expected int"], said
    assert "toolkit.options" in imported and "torch" not in imported, sorted(m for m in imported if "torch" in m)


@pytest.mark.parametrize("command", ["train", "search", "score", "wise", "distill"])
def test_quiet_means_no_progress_bar_in_every_command_that_shows_one(command):
    args = {"train": ["--data", "d", "--out", "o"], "search": ["--data", "d", "--out", "o"],
            "distill": ["--data", "d", "--out", "o", "--teacher", "t"],
            "score": ["m", "f.csv", "-o", "x.csv"], "wise": ["r", "--out", "o"]}[command]
    assert _resolved(command, *args, "--quiet")["progress"] is False
    assert _resolved(command, *args)["progress"] is True


def test_score_range_and_shard_errors_are_one_line():
    for args, expected in [(["check", "f.csv", "--score-range", "5:1"], "--score-range '5:1': LOW must be below HIGH"),
                           (["score", "m", "f.csv", "-o", "x.csv", "--shard", "4/4"], "--shard 4/4: need 0 <= I < N")]:
        proc = toolkit(*args, check=False)
        assert proc.returncode == 2 and proc.stderr.strip() == expected


def test_check_a_datasets_folder():
    folder = Path(__file__).resolve().parent / "corpus" / "hf_dataset" / "pairs"
    proc = toolkit("check", folder, "--id-col", "pair_id", "--score-range", "0:5", check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[:3] == [f"{folder}:row 7: empty sentence1", f"{folder}:row 20: null score",
                                            f"{folder}:row 33: score 7 outside the declared range 0..5"]


def test_check_a_parquet_file_with_a_column_name_that_is_not_utf8(tmp_path):
    """The original report: pyarrow decodes column names strictly, and ``toolkit check`` ended with
    "internal error: UnicodeDecodeError" (exit 70). Now: the bad-input status and one line naming the
    file and showing the name's bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    names = [b"sentence1", b"sentence2", b"score", b"caf\xe9 \n"]  # 0xE9: Latin-1's é; pyarrow writes bytes unchecked
    values = [pa.array(["A fine sentence."]), pa.array(["Another one."]), pa.array([2.5]), pa.array([1])]
    pq.write_table(pa.Table.from_arrays(values, schema=pa.schema(
        [pa.field(n, v.type) for n, v in zip(names, values)])), path)
    proc = toolkit("check", path, check=False)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"{path}: a column or field name is not valid UTF-8: b'caf\\xe9 \\n' (byte 0xe9 at byte 4)\n"


def test_a_runs_config_json_is_a_config_file(small_models, small_stsb):
    """``--config RUN/config.json``: train again with a run's settings (here: those conftest gave)."""
    resolved = _resolved("train", "--config", small_models["run"] / "config.json", "--out", "o", "--seed", "7")
    assert (resolved["max_length"], resolved["epochs"], resolved["batch_size"]) == (48, 1, 8)
    assert (resolved["lr"], resolved["limit"], resolved["seed"]) == (5e-3, 48, 7)
    assert resolved["train"] == str(small_stsb["train"]) and resolved["dev"] == str(small_stsb["dev"])
