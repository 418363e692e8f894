"""Inputs for fuzzing the pair readers, and the oracle that says whether an outcome is a defect.

Shared by tests/test_fuzz_sources.py (hypothesis, a bounded budget in CI) and
benchmarks/fuzz_sources.py (a long run that counts defects). Every generator draws from a
``random.Random``, so a case is replayed from its seed.

The property: whatever the bytes, reading a file gives pairs (valid ones), a report of problems, or
one clean error; never an exception of another kind, never a message spanning lines, holding
control characters or text that cannot be written out, never a message that does not name the file
(and the line or row, for a row's problem).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from toolkit import cli
from toolkit.errors import ToolkitError
from toolkit.sources import SourceOptions, read_pairs

CORPUS = Path(__file__).resolve().parent / "corpus"
EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet", ".db")
SPECIAL = [b"\x00", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", "\u2028".encode(),
           "\u2029".encode(), b"\xc2\x85", b"\r", b"\n", b"\r\n", b'"', b'""', b"\t", b",", b"\\", b"{", b"}",
           b"[", b"NaN", b"inf", b"-inf", b"1e309", b'"\\ud800"', b"\x1b[31m", b"\x0b", b"\x0c", b"\x1c"]
TEXTS = ["A plane is taking off.", "An air plane is taking off.", "", " ", "\t", "a\nb", "a\r\nb", "line\u2028sep",
         "para\u2029sep", "nul\x00byte", "\udcff\udcfe bytes that were not UTF-8", "\ud800 lone", "\x1b[2J",
         "quote \" inside", "comma, inside", "tab\tinside", "é ü 日本語 🙂", "x" * 300, "\ufeffbom"]
SCORES: list[Any] = [0.0, 2.5, 5.0, -1.0, 7.5, math.nan, math.inf, -math.inf, "3.2", " 4 ", "", "NaN", "inf",
                     "1e400", "abc", None, True, 3, "\u0663"]  # U+0663: an Arabic-Indic digit, float() reads it
NAMES = ["sentence1", "sentence2", "score", "genre", "id", "", "sentence1", "a\nb", "\u2028", "é", "x" * 200,
         "\udcff", "sc\x00ore"]


class Defect(AssertionError):
    """An outcome the readers promise never to produce."""


# -- inputs ---------------------------------------------------------------------------------------------
def seeds() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.suffix in EXTENSIONS)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-4 of: truncate, flip a byte, insert a special sequence, delete or repeat a range, insert a
    long field."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        at = rng.randint(0, len(data))
        if kind == 0:
            del data[at:]
        elif kind == 1 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind in (2, 3):
            data[at:at] = rng.choice(SPECIAL)
        elif kind == 4:
            del data[at:at + rng.randint(1, 64)]
        elif kind == 5:
            data[at:at] = data[at:at + rng.randint(1, 256)] * rng.randint(1, 3)
        else:
            data[at:at] = b"x" * rng.choice([300, 70_000])
    return bytes(data)


def _value(rng: random.Random, pool: list) -> Any:
    return rng.choice(pool) if rng.random() < 0.8 else rng.choice(TEXTS + SCORES)


def table(rng: random.Random) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: mostly the expected columns, with odd names, values and types mixed in."""
    names = ["sentence1", "sentence2", "score"] + (["genre"] if rng.random() < 0.3 else [])
    if rng.random() < 0.3:
        names[rng.randrange(len(names))] = rng.choice(NAMES)
    rows = [[_value(rng, SCORES if n == "score" else TEXTS) for n in names] for _ in range(rng.randint(0, 12))]
    if rows and rng.random() < 0.2:  # a ragged row
        rows[rng.randrange(len(rows))].append("extra")
    return names, rows


def _text_bytes(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _utf8(text: str) -> bytes:
    """UTF-8, except that surrogates become the (invalid) bytes they stand for."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def write_table(path: Path, names: list[str], rows: list[list[Any]], rng: random.Random) -> None:
    """``names``/``rows`` in the format ``path``'s extension names, with what that format allows."""
    if path.suffix in (".csv", ".tsv"):
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="," if path.suffix == ".csv" else "\t", lineterminator=rng.choice(["\n", "\r\n"]))
        w.writerow(names)
        w.writerows([[_text_bytes(v) for v in row] for row in rows])
        path.write_bytes(_utf8(buf.getvalue()))
    elif path.suffix == ".jsonl":
        lines = []
        for row in rows:
            obj = {n: (v if not isinstance(v, float) or math.isfinite(v) or rng.random() < 0.5 else str(v))
                   for n, v in zip(names, row)}
            lines.append(json.dumps(obj, ensure_ascii=rng.random() < 0.5))
        path.write_bytes(_utf8("\n".join(lines)))
    elif path.suffix == ".parquet":
        columns = {}
        for k, name in enumerate(dict.fromkeys(_utf8(n).decode("utf-8", "replace") for n in names)):
            values = [row[k] if k < len(row) else None for row in rows]
            columns[name] = _arrow_column(values, rng)
        pq.write_table(pa.table(columns) if columns else pa.table({"x": pa.array([], pa.int64())}), path)
    else:
        con = sqlite3.connect(path)
        names = list(dict.fromkeys(_utf8(n).decode("utf-8", "replace").replace("\x00", "?") for n in names))
        cols = ", ".join('"' + n.replace('"', '""') + '"' for n in names)
        width = len(names)
        con.execute(f"CREATE TABLE pairs ({cols})")
        for row in rows:
            values = [(_utf8(v) if isinstance(v, str) and rng.random() < 0.2 else
                       v if not isinstance(v, str) else _utf8(v).decode("utf-8", "replace"))
                      for v in (row + [None] * width)[:width]]
            con.execute(f"INSERT INTO pairs VALUES ({', '.join('?' * width)})", values)
        con.commit()
        con.close()


def _arrow_column(values: list[Any], rng: random.Random) -> pa.Array:
    """Strings (some holding bytes that are not UTF-8), binary, numbers, or whatever arrow infers."""
    kind = rng.randrange(4)
    if kind == 0:  # a string column written from raw bytes, unchecked: invalid UTF-8 reaches the file
        data = [_utf8(_text_bytes(v)) if v is not None else None for v in values]
        return pa.array(data, pa.binary()).view(pa.string())
    if kind == 1:
        return pa.array([_utf8(_text_bytes(v)) for v in values], pa.binary())
    if kind == 2:
        floats = [v if isinstance(v, float) else None for v in values]
        return pa.array(floats, pa.float64())
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError, ValueError, TypeError):
        return pa.array([None if v is None else repr(v) for v in values], pa.string())


def case(rng: random.Random, folder: Path) -> Path:
    """One input file: a mutated seed, random bytes, or a generated table (mutated or not)."""
    kind = rng.randrange(4)
    ext = rng.choice(EXTENSIONS)
    path = folder / f"case{ext}"
    if kind == 0:
        seed = rng.choice(seeds())
        path = folder / f"case{seed.suffix}"
        path.write_bytes(mutate(seed.read_bytes(), rng))
    elif kind == 1:
        path.write_bytes(rng.randbytes(rng.randint(0, 600)))
    else:
        write_table(path, *table(rng), rng)
        if kind == 3:
            path.write_bytes(mutate(path.read_bytes(), rng))
    return path


# -- the oracle -----------------------------------------------------------------------------------------
LOCATED = re.compile(r"^(?P<file>.*?):(?P<loc>\d+|row \d+): \S")


def clean_line(message: str, path: Path, located: bool = False) -> None:
    """One line, printable, writable as UTF-8, bounded, naming the file (and line or row)."""
    if not message.isprintable():
        bad = next(c for c in message if not c.isprintable())
        raise Defect(f"message holds {bad!r}: {message[:300]!r}")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        raise Defect(f"message cannot be written as UTF-8: {message[:300]!r}") from None
    if len(message) > 1000:
        raise Defect(f"message of {len(message)} characters: {message[:300]!r}")
    if not message.startswith(str(path)):
        raise Defect(f"message does not name the file: {message[:300]!r}")
    if located and not LOCATED.match(message):
        raise Defect(f"a row's problem without its line or row: {message[:300]!r}")


def _valid_pairs(pairs, need_score: bool) -> None:
    n = len(pairs.s1)
    if not (len(pairs.s2) == len(pairs.ids) == n):
        raise Defect("pairs of unequal lengths")
    for s in (*pairs.s1, *pairs.s2):
        if not isinstance(s, str) or not s.strip():
            raise Defect(f"an unusable sentence was kept: {s!r:.100}")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise Defect(f"a sentence that is not valid text was kept: {s!r:.100}") from None
    if need_score and (pairs.scores is None or len(pairs.scores) != n or not all(map(math.isfinite, pairs.scores))):
        raise Defect("scores missing or not finite")


def outcome(path: Path) -> str:
    """Read ``path`` as train/eval (fail, skip) and score (no gold) do, and run ``toolkit check`` on
    it; raise ``Defect`` if any of it breaks the property. Returns what happened: pairs/report/error."""
    seen = set()
    for need_score, policy in ((True, "fail"), (True, "skip"), (False, "skip")):
        try:
            pairs, source = read_pairs(path, SourceOptions(policy=policy, need_score=need_score))
        except ToolkitError as e:
            clean_line(str(e), path)
            seen.add("error")
            continue
        except Exception as e:  # noqa: BLE001 - the point: anything else is a defect
            raise Defect(f"read_pairs(policy={policy}) raised {type(e).__name__}: {str(e)[:200]!r}") from e
        _valid_pairs(pairs, need_score)
        for problem in source.report.problems:
            clean_line(problem, path, located=True)
        seen.add("report" if source.report.bad else "pairs")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", str(path)])
    if code not in (0, 1, 2):
        raise Defect(f"toolkit check exited {code}: {err.getvalue()[:300]!r}")
    errors = err.getvalue().splitlines()
    if code == 2 and len(errors) != 1:
        raise Defect(f"toolkit check's error took {len(errors)} lines: {err.getvalue()[:300]!r}")
    for line in errors:
        clean_line(line, path)
    for line in out.getvalue().splitlines():
        if not line.isprintable():
            raise Defect(f"toolkit check printed {line[:300]!r}")
    return "error" if seen == {"error"} else "report" if "report" in seen else "pairs"
