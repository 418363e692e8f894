"""Inputs for fuzzing the pair readers, and the oracle that says whether an outcome is a defect.

Shared by tests/test_fuzz_sources.py (hypothesis, a bounded budget in CI) and
benchmarks/fuzz_sources.py (a long run that counts defects). Every generator draws from a
``random.Random``, so a case is replayed from its seed.

The property: whatever the bytes, reading a file gives pairs (valid ones), a report of problems, or
one clean error; never an exception of another kind, never a message spanning lines, holding
control characters or text that cannot be written out, never a message that does not name the file
(and the line or row, for a row's problem). For files with odd names (``named_case``), also: never a
value from another column than the one each needed name finds (``named_outcome``).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import re
import sqlite3
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from toolkit import cli
from toolkit.common.errors import ToolkitError, show_path
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
    if not message.startswith(show_path(path)):  # the path as typed, escaped where it would break the line
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


# -- names: every name a file carries (header fields, JSON keys, columns, nested fields, tables, data files) --
NEEDED = ("sentence1", "sentence2", "score")
ODD_NAMES = [b"", b" ", b"sentence1", b"sentence2", b"score", b" sentence1", b"sentence1 ", b"Sentence1", b"SCORE",
             b"\xef\xbb\xbfsentence1", b"\xef\xbb\xbf", b"\xff", b"sentence1\xff", b"s\xc3ntence1", b"\xed\xa0\x80",
             b"\xf4\x90\x80\x80", b"\xc0\xae", b"a\nb", b"a\r\nb", b"\r", b"\t", b"sentence1\t", b",", b'"', b'""',
             b"'", b"[x]", b"]", b"`x`", b"\x00", b"sc\x00ore", b"\x1b[31m", b"\x7f", "\u2028".encode(),
             "\u2029".encode(), b"\xc2\x85", b"\x0b", b"\x0c", b"\x1c", "\u200b".encode(), "\u202e".encode(),
             b"x" * 300, b"y" * 5000, "é".encode(), "日本語".encode(), "🙂".encode(), b"\\", b"\\u0073entence1",
             b"\\ud800", b"\\udcff", b"\\x41", b"\\", b"{", b"}", b":", b".", b"a.b", b"sentence1.x", b"rowid",
             b"sqlite_x", b"-- x", b"/*", b"1", b"2.5", b"__index_level_0__", b"PAR1", b"SQLite format 3"]


def odd_name(rng: random.Random) -> bytes:
    """A name as the file stores it: one of ODD_NAMES, random bytes, random code points (surrogates
    included, written as the bytes CESU-8 would give them), or two of those run together."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 12))
    if kind == 1:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(1, 6))).encode("utf-8", "surrogatepass")
    if kind == 2:
        return odd_name(rng) + rng.choice(ODD_NAMES)
    return rng.choice(ODD_NAMES)


@dataclasses.dataclass
class NamedCase:
    """A generated file with odd names, and what a reader must make of it.

    ``seen`` is each column's name as the format defines it (None: a name the format cannot hold,
    so that the file, or every row for JSONL, must be refused); ``rows`` the cells (every one a
    distinct number as text, so that a kept value tells which column it came from). ``exact``: the
    format has no layout heuristics, so a file whose needed names are each there once must be read whole.
    """

    path: Path
    seen: list[Optional[str]]
    rows: list[list[str]]
    exact: bool
    refused: bool = False  # the format refuses the file whatever its names (several tables, a broken schema)

    def column(self, name: str) -> Optional[int]:
        """Where the only column that ``name`` finds is; None when it is missing, ambiguous or any name is unusable."""
        if self.refused or None in self.seen or self.seen.count(name) != 1:
            return None
        return self.seen.index(name)


def odd_names(rng: random.Random) -> list[bytes]:
    """The expected columns, one of them (or none) renamed, odd ones inserted, sometimes one repeated."""
    names = [n.encode() for n in NEEDED]
    if rng.random() < 0.5:
        names[rng.randrange(len(names))] = odd_name(rng)
    for _ in range(rng.randint(0, 3)):
        names.insert(rng.randint(0, len(names)), odd_name(rng))
    if rng.random() < 0.2:
        names.insert(rng.randint(0, len(names)), rng.choice(names))
    return names


def _strict(name: bytes) -> Optional[str]:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def named_case(rng: random.Random, folder: Path) -> NamedCase:
    """A file in any format (a datasets folder too) whose names are odd and whose values are all good."""
    names = odd_names(rng)
    rows = [[f"{r + 1}.{j:03d}" for j in range(len(names))] for r in range(rng.choice([0, 1, 2, 3, 5]))]
    fmt = rng.choice([".csv", ".tsv", ".jsonl", ".parquet", ".db", ""])
    path = folder / ((_file_name(rng) if rng.random() < 0.3 else "named") + fmt)
    writer = {".csv": _named_delimited, ".tsv": _named_delimited, ".jsonl": _named_jsonl,
              ".parquet": _named_arrow, "": _named_arrow, ".db": _named_sqlite}[fmt]
    return writer(path, names, rows, rng)


def _named_delimited(path: Path, names: list[bytes], rows: list[list[str]], rng: random.Random) -> NamedCase:
    """A header of arbitrary bytes (quoted where csv quotes), maybe after a BOM. Names are read as
    decoded with surrogateescape and stripped; a leading BOM is the file's. Not ``exact``: by rule,
    a tab in a .csv's first line makes it tab-separated, a first line like the STS-B release's is
    read as one, a bare CR (csv.writer leaves it unquoted) ends the header, and any repeated header
    name is refused."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="," if path.suffix == ".csv" else "\t", lineterminator=rng.choice(["\n", "\r\n"]))
    w.writerow([n.decode("utf-8", "surrogateescape") for n in names])
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8", "surrogateescape")
    seen = [n.decode("utf-8", "surrogateescape") for n in names]
    if rng.random() < 0.2:
        data = b"\xef\xbb\xbf" + data
    elif data.startswith(b"\xef\xbb\xbf"):  # the first name's BOM, unquoted, is the file's
        seen[0] = seen[0][1:]
    path.write_bytes(data)
    return NamedCase(path, [None if "\x00" in n else n.strip() for n in seen], rows, exact=False)


def _json_key(name: bytes, rng: random.Random) -> tuple[bytes, Optional[str]]:
    """A key as JSON text (escaped, raw UTF-8 holding any bytes, or the bytes between quotes as they
    are: bad escapes, control characters, quotes) and the key json reads from it (None: the line is not JSON)."""
    text = name.decode("utf-8", "surrogateescape")
    kind = rng.randrange(3)
    if kind == 0:
        token = json.dumps(text).encode()  # bytes that are not UTF-8 become "\udcXX" escapes: lone surrogates
    elif kind == 1:
        token = json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogateescape")
    else:
        token = b'"' + name + b'"'
    try:
        key = json.loads(token.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return token, None
    return token, key if isinstance(key, str) else None


def _named_jsonl(path: Path, names: list[bytes], rows: list[list[str]], rng: random.Random) -> NamedCase:
    """Every line one object with the same keys, written in the same way; repeated keys kept."""
    keys = [_json_key(n, rng) for n in names]
    lines = [b"{" + b", ".join(k + b": " + json.dumps(v).encode() for (k, _), v in zip(keys, row)) + b"}"
             for row in rows]
    path.write_bytes((b"\xef\xbb\xbf" if rng.random() < 0.2 else b"") + b"\n".join(lines) + b"\n")
    return NamedCase(path, [key for _, key in keys], rows, exact=True)


def _nested(rng: random.Random, n: int) -> tuple[bytes, list[bytes], pa.Array]:
    """A struct column (name, field names, values) with odd names; its own name is none of the needed ones."""
    children = [odd_name(rng) for _ in range(rng.randint(1, 2))]
    name = odd_name(rng)
    while name.decode("utf-8", "replace") in NEEDED:
        name = odd_name(rng)
    fields = [pa.field(child, pa.string()) for child in children]
    return name, children, pa.StructArray.from_arrays([pa.array(["v"] * n, pa.string()) for _ in fields], fields=fields)


def _named_arrow(path: Path, names: list[bytes], rows: list[list[str]], rng: random.Random) -> NamedCase:
    """Parquet (path ends .parquet) or a datasets save_to_disk folder (Arrow stream files): field
    names are bytes, as pyarrow writes them unchecked; sometimes a struct column with odd field
    names, odd schema metadata, and (datasets) a second data file with the columns shuffled; data
    files with odd names. Parquet's reader decodes every name, nested ones too; the Arrow stream
    reader the top-level ones (and a struct's only when that column is read)."""
    arrays = [pa.array([row[j] for row in rows], pa.string()) for j in range(len(names))]
    fields = [pa.field(n, pa.string()) for n in names]
    decoded = list(names)
    if rng.random() < 0.3:
        name, children, nested = _nested(rng, len(rows))
        at = rng.randint(0, len(fields))
        fields.insert(at, pa.field(name, nested.type))
        arrays.insert(at, nested)
        decoded += [name] + (children if path.suffix == ".parquet" else [])
    metadata = {odd_name(rng): odd_name(rng)} if rng.random() < 0.3 else None
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    refused = any(_strict(n) is None for n in decoded)
    if path.suffix == ".parquet":
        with open(path, "wb") as f:
            pq.write_table(table, f)
        return NamedCase(path, [_strict(n) for n in names], rows, exact=True, refused=refused)
    path.mkdir()
    # state.json may not list a name with a backslash (the reader refuses it as a path); no name twice
    files = list(dict.fromkeys(_file_name(rng).replace("\\", "_") for _ in range(1 if rng.random() < 0.7 else 2)))
    for k, name in enumerate(files):
        part = table.slice(0, 1) if len(files) == 2 and k == 0 else table.slice(1) if len(files) == 2 else table
        if k == 1:
            order = list(range(part.num_columns))
            rng.shuffle(order)
            part = part.select(order)
        with open(path / name, "wb") as f, pa.ipc.new_stream(f, part.schema) as w:  # pyarrow wants UTF-8 paths
            w.write_table(part)
    state = {"_data_files": [{"filename": name} for name in files], "_split": None}
    (path / "state.json").write_text(json.dumps(state), encoding="utf-8")
    return NamedCase(path, [_strict(n) for n in names], rows, exact=True, refused=refused)


def _file_name(rng: random.Random) -> str:
    """A file name that is odd (any bytes, as Linux allows them) but keeps its extension and is no
    other file of the case."""
    return "f" + os.fsdecode(odd_name(rng).replace(b"/", b"_").replace(b"\x00", b"_")[:200])


def _sqlite_ident(name: bytes, rng: random.Random) -> bytes:
    """``name`` quoted as SQLite allows: "..." and `...` (doubling the quote), [...] (no escape: a ]
    inside ends it early), or '...' (a string literal where a name goes, which SQLite takes as the name)."""
    quote = rng.choice([b'"', b"`", b"[", b"'"])
    if quote == b"[":
        return b"[" + name + b"]"
    return quote + name.replace(quote, quote + quote) + quote


def _named_sqlite(path: Path, names: list[bytes], rows: list[list[str]], rng: random.Random) -> NamedCase:
    """A table whose name and column names are arbitrary bytes: written under plain names, then the
    schema's SQL rewritten as bytes (PRAGMA writable_schema), since sqlite3 only takes SQL as UTF-8
    text. What the names are is then asked of SQLite itself (pragma_table_info); a schema it cannot
    parse (a NUL, a bad quote, a repeated name) leaves a database no reader can open."""
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE t0 ({', '.join(f'c{j}' for j in range(len(names)))})")
    con.executemany(f"INSERT INTO t0 VALUES ({', '.join('?' * len(names))})", rows)
    if rng.random() < 0.1:
        con.execute("CREATE TABLE other (x)")
    table = b"pairs" if rng.random() < 0.5 else odd_name(rng)
    sql = b"CREATE TABLE " + _sqlite_ident(table, rng) + b" (" + b", ".join(_sqlite_ident(n, rng) for n in names) + b")"
    con.commit()
    con.execute("PRAGMA writable_schema = ON")
    con.execute("UPDATE sqlite_master SET name = CAST(? AS TEXT), tbl_name = CAST(? AS TEXT), sql = CAST(? AS TEXT) "
                "WHERE name = 't0'", [table, table, sql])
    con.commit()
    con.close()
    con = sqlite3.connect(path)
    con.text_factory = bytes
    try:
        tables = con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')").fetchall()
        stored = [r[0] for r in con.execute("SELECT name FROM pragma_table_info(CAST(? AS TEXT))", [table])]
    except (sqlite3.DatabaseError, UnicodeDecodeError):  # sqlite3 decodes SQLite's message, which may quote the bytes
        tables, stored = [], []
    finally:
        con.close()
    refused = len(tables) != 1 or _strict(table) is None or not stored
    return NamedCase(path, [_strict(n) for n in stored], rows, exact=True, refused=refused)


def named_outcome(case: NamedCase) -> str:
    """``outcome``'s property, and what names decide: each kept pair holds the values of the one
    column each needed name finds (never a guess between two, never one from another column); no
    pair is kept when a name is missing, repeated or unusable; and (``exact`` formats) a file whose
    names are fine is read whole."""
    result = outcome(case.path)
    at = [case.column(name) for name in NEEDED]
    try:
        pairs, source = read_pairs(case.path, SourceOptions(policy="skip"))
    except ToolkitError as e:
        if case.exact and case.rows and None not in at:
            raise Defect(f"a file whose names are fine was refused: {str(e)[:300]!r}") from None
        return result
    if source.reader.layout == "stsb":
        return result  # a header that looks like a row of the STS-B release is read as one: its own rule
    shown = [repr(n)[:40] for n in case.seen]
    if None in at and len(pairs):
        raise Defect(f"{len(pairs)} pairs kept though the names {shown} leave a needed column missing or ambiguous")
    for k, ident in enumerate(pairs.ids):
        row = case.rows[int(ident) - 1]
        want = (row[at[0]], row[at[1]], float(row[at[2]]))
        if (pairs.s1[k], pairs.s2[k], float(pairs.scores[k])) != want:
            raise Defect(f"row {ident} read as {(pairs.s1[k], pairs.s2[k], pairs.scores[k])}, not {want} "
                         f"(names {shown})")
    if case.exact and None not in at and (len(pairs) != len(case.rows) or source.report.bad):
        raise Defect(f"{len(pairs)} of {len(case.rows)} rows read from a file whose names are fine (names {shown}): "
                     f"{source.report.problems[:1]}")
    return result
