"""Every byte sequence either parses or fails in one clean line: property-based tests over every
reader (CSV, TSV, the STS-B release, JSONL, Parquet, SQLite) and ``toolkit check``.

Inputs (tests/source_fuzz.py): arbitrary bytes; seeds from tests/corpus mutated (truncated, bits
flipped, NUL, BOM, invalid UTF-8, lone surrogates, U+2028, CR/LF, quotes, 70 kB fields inserted);
and generated tables with odd header names, values and types (blobs, NaN/inf, non-UTF-8 strings in
Parquet and SQLite), mutated or not; and files in every format (a datasets folder too) whose names
are odd: header fields, JSON keys, columns, nested fields, SQLite tables, data files, as arbitrary
bytes, repeated, 5 kB (``source_fuzz.named_case``). The oracle (``source_fuzz.outcome``) is the
property itself; for names, ``named_outcome`` adds that a kept pair comes from the one column each
needed name finds. benchmarks/fuzz_sources.py runs the same generators for 10,000+ cases (``--names``:
the named ones) and counts defects.
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_fuzz import EXTENSIONS, case, named_case, named_outcome, outcome, seeds

from toolkit.common.errors import BadInputError
from toolkit.sources import Columns, PairSource, SourceOptions, read_pairs

# CI's share of the fuzzing: the volume (10,000 cases and more, RESULTS.md) is benchmarks/fuzz_sources.py's
BUDGET = settings(max_examples=150, deadline=None, database=None, derandomize=False,
                  suppress_health_check=[HealthCheck.too_slow])


@BUDGET
@given(data=st.binary(max_size=3000), ext=st.sampled_from(EXTENSIONS))
def test_arbitrary_bytes_parse_or_fail_in_one_clean_line(data, ext):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{ext}"
        path.write_bytes(data)
        outcome(path)


@BUDGET
@given(rng=st.randoms(use_true_random=False))
def test_mutated_seeds_and_generated_tables_parse_or_fail_in_one_clean_line(rng):
    with tempfile.TemporaryDirectory() as folder:
        outcome(case(rng, Path(folder)))


def _parts_read_alone_equal_the_whole_read(path: Path, chunk_size: int) -> None:
    """What a Ray read task does (one part of a file, from its offset) gives that part's rows, lines and
    ids exactly as one read of the whole file does."""
    options = SourceOptions(need_score=False, policy="skip", chunk_size=chunk_size)
    try:
        source = PairSource(path, options)
        whole = list(source.chunks(keep_empty=True))
    except BadInputError:
        return
    if not source.reader.splittable:
        return
    assert len(source.plan) == len(whole)
    for part, chunk in zip(source.plan, whole):
        alone = PairSource(path, options).read_part(part)
        assert (alone.ids, alone.s1, alone.s2, alone.locs) == (chunk.ids, chunk.s1, chunk.s2, chunk.locs), part


@BUDGET
@given(data=st.binary(max_size=3000), ext=st.sampled_from([".csv", ".tsv", ".jsonl"]),
       chunk_size=st.integers(1, 5))
def test_arbitrary_bytes_read_part_by_part_equal_the_whole_read(data, ext, chunk_size):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{ext}"
        path.write_bytes(data)
        _parts_read_alone_equal_the_whole_read(path, chunk_size)


@BUDGET
@given(rng=st.randoms(use_true_random=False), chunk_size=st.integers(1, 5))
def test_mutated_seeds_and_generated_tables_read_part_by_part_equal_the_whole_read(rng, chunk_size):
    with tempfile.TemporaryDirectory() as folder:
        _parts_read_alone_equal_the_whole_read(case(rng, Path(folder)), chunk_size)


EDGES = {  # a BOM, CRLF and bare CR line ends, blank lines, quoted newlines, bad rows, invalid UTF-8
    ".csv": b'\xef\xbb\xbfsentence1,sentence2\r\n"a\nb",c\r\n\r\nd,e\rf,"g\r\nh"\nbad\n\xe9,x\ni,j\n"k""l",m\n',
    ".tsv": b'\xef\xbb\xbfsentence1\tsentence2\na\tb\n\n"c\nd"\te\n\tempty\nf\tg\r\nh\ti\n',
    ".jsonl": b'\xef\xbb\xbf{"sentence1": "a", "sentence2": "b"}\n\n{bad\n'
              b'{"sentence1": "\xc3\xa9", "sentence2": "d"}\r\n[1]\n{"sentence1": "e", "sentence2": "f"}\n'
              b'{"sentence1": "g", "sentence2": "h"}',
}


@pytest.mark.parametrize("ext", sorted(EDGES))
@pytest.mark.parametrize("bom", [True, False])
def test_edge_files_read_part_by_part_equal_the_whole_read(tmp_path, ext, bom):
    path = tmp_path / f"edges{ext}"
    path.write_bytes(EDGES[ext] if bom else EDGES[ext][3:])
    for chunk_size in (1, 2, 3, 4):
        _parts_read_alone_equal_the_whole_read(path, chunk_size)
    assert len(PairSource(path, SourceOptions(need_score=False, policy="skip", chunk_size=1)).read_all()) >= 4


def test_the_seed_corpus_reads_cleanly():
    assert {p.suffix for p in seeds()} == set(EXTENSIONS)
    for path in seeds():
        assert outcome(path) == "pairs", path


def _problem(path: Path, **options) -> str:
    with pytest.raises(BadInputError) as e:
        read_pairs(path, SourceOptions(**options))
    return str(e.value)


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".db", ".parquet"])
def test_invalid_utf8_is_reported_as_such_with_its_row_and_byte_offset(tmp_path, ext):
    rng = random.Random(0)
    from source_fuzz import write_table

    path = tmp_path / f"bad{ext}"
    good = ["A fine sentence.", "Another one.", 1.0]
    bad = ["caf\udce9 au lait", "Fine.", 2.0]  # 0xE9: Latin-1's é, not UTF-8
    if ext == ".parquet":
        pq.write_table(pa.table({"sentence1": pa.array([b"A fine sentence.", b"caf\xe9 au lait"]).view(pa.string()),
                                 "sentence2": ["Another one.", "Fine."], "score": [1.0, 2.0]}), path)
    elif ext == ".db":
        import sqlite3

        con = sqlite3.connect(path)
        con.execute("CREATE TABLE pairs (sentence1 TEXT, sentence2 TEXT, score REAL)")
        con.execute("INSERT INTO pairs VALUES (?, ?, ?)", good)
        con.execute("INSERT INTO pairs VALUES (CAST(? AS TEXT), ?, ?)", [b"caf\xe9 au lait", "Fine.", 2.0])
        con.commit()
        con.close()
    else:
        write_table(path, ["sentence1", "sentence2", "score"], [good, bad], rng)
    where = {".csv": ":3", ".tsv": ":3", ".jsonl": ":2", ".db": ":row 2", ".parquet": ":row 2"}[ext]
    expected = "invalid UTF-8 (byte 0xe9 at byte" if ext == ".jsonl" else \
        "invalid UTF-8 in sentence1: byte 0xe9 at byte 4 of the field"
    assert _problem(path).startswith(f"{path}{where}: {expected}")


def test_a_field_beyond_the_csv_limit_is_one_bad_row(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_bytes(b"sentence1,sentence2,score\n" + b"x" * (17 << 20) + b",y,1\nok,fine,2\n")
    pairs, source = read_pairs(path, SourceOptions(policy="skip"))
    assert (len(pairs), source.report.bad) == (1, 1)
    assert source.report.problems[0].startswith(f"{path}:2: malformed CSV: field larger than field limit")


# -- names: header fields, JSON keys, Parquet and Arrow columns and nested fields, SQLite tables and
# columns, data files; as bytes that are not UTF-8, control characters, quotes, repeats, 5 kB --------
@BUDGET
@given(rng=st.randoms(use_true_random=False))
def test_odd_names_parse_or_fail_in_one_clean_line_and_never_read_the_wrong_column(rng):
    with tempfile.TemporaryDirectory() as folder:
        named_outcome(named_case(rng, Path(folder)))


def _arrow_table(names: list, nested: bool = False) -> pa.Table:
    """One good pair under ``names`` (str or bytes: pyarrow writes bytes unchecked), then a struct column."""
    arrays = [pa.array([v]) for v in ("A fine sentence.", "Another one.", "2.5", "more")][:len(names)]
    fields = [pa.field(n, pa.string()) for n in names]
    if nested:
        struct = pa.StructArray.from_arrays([pa.array(["v"])], fields=[pa.field(b"caf\xe9", pa.string())])
        arrays.append(struct)
        fields.append(pa.field("meta", struct.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _datasets_folder(folder: Path, table: pa.Table, file: str = "data-00000-of-00001.arrow") -> Path:
    folder.mkdir()
    with open(folder / file, "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": file}]}))
    return folder


def _sqlite_renamed(path: Path, table: bytes, columns: list[bytes]) -> Path:
    """A one-pair table whose name and column names are bytes (the schema's SQL rewritten as bytes:
    sqlite3 takes SQL as UTF-8 text only)."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a, b, c)")
    con.execute("INSERT INTO t VALUES ('A fine sentence.', 'Another one.', 2.5)")
    con.commit()
    con.execute("PRAGMA writable_schema = ON")
    sql = b'CREATE TABLE "' + table + b'" (' + b", ".join(b'"' + c + b'"' for c in columns) + b")"
    con.execute("UPDATE sqlite_master SET name = CAST(? AS TEXT), tbl_name = CAST(? AS TEXT), sql = CAST(? AS TEXT)",
                [table, table, sql])
    con.commit()
    con.close()
    return path


NAMES, NOT_UTF8 = [b"sentence1", b"sentence2", b"score"], b"caf\xe9"  # 0xE9: Latin-1's é


NAMED = {"parquet": "a column or field name", "parquet-nested": "a column or field name",
         "datasets": "data-00000-of-00001.arrow: a column name", "sqlite-column": "a column name",
         "sqlite-table": "the table name"}


@pytest.mark.parametrize("kind", sorted(NAMED))
def test_a_name_that_is_not_utf8_is_one_line_that_shows_its_bytes(tmp_path, kind):
    """pyarrow and sqlite3 decode names strictly (the original report: ``toolkit check`` on such a
    Parquet file ended with "internal error: UnicodeDecodeError", exit 70)."""
    if kind.startswith("parquet"):
        path = tmp_path / "bad.parquet"
        pq.write_table(_arrow_table(NAMES, nested=True) if kind == "parquet-nested" else
                       _arrow_table(NAMES + [NOT_UTF8]), path)
    elif kind == "datasets":
        path = _datasets_folder(tmp_path / "ds", _arrow_table(NAMES + [NOT_UTF8]))
    elif kind == "sqlite-column":
        path = _sqlite_renamed(tmp_path / "bad.db", b"pairs", NAMES[:2] + [NOT_UTF8])
    else:
        path = _sqlite_renamed(tmp_path / "bad.db", NOT_UTF8, NAMES)
    assert _problem(path) == f"{path}: {NAMED[kind]} is not valid UTF-8: b'caf\\xe9' (byte 0xe9 at byte 4)"


def test_a_nested_field_name_that_is_not_utf8_in_a_column_read_is_one_line(tmp_path):
    """Arrow stream files decode a struct's field names only when that column is read."""
    path = _datasets_folder(tmp_path / "ds", _arrow_table(["sentence1", "sentence2", "score"], nested=True))
    assert len(read_pairs(path, SourceOptions())[0]) == 1
    with pytest.raises(BadInputError) as e:
        read_pairs(path, SourceOptions(columns=Columns(s1_col="meta")))
    assert str(e.value) == (f"{path}: unreadable after row 0: a nested value or field name is not valid UTF-8: "
                            f"b'caf\\xe9'")


@pytest.mark.parametrize("kind", ["parquet", "datasets", "sqlite-query", "jsonl"])
def test_a_needed_column_named_twice_is_refused_not_guessed(tmp_path, kind):
    """pyarrow raised KeyError (exit 70) on a Parquet file with two sentence1 columns; json.loads keeps
    the last of two equal keys, sqlite3 gives both of two equal aliases: the reader read one of them."""
    names = ["sentence1", "sentence2", "sentence1", "score"]
    options = SourceOptions()
    if kind == "parquet":
        path = tmp_path / "twice.parquet"
        pq.write_table(pa.Table.from_arrays([pa.array([v]) for v in ("a", "b", "c", "1")], names=names), path)
        expected = f"{path}: 2 columns named 'sentence1': which to read is ambiguous"
    elif kind == "datasets":
        table = pa.Table.from_arrays([pa.array([v]) for v in ("a", "b", "c", "1")], names=names)
        path = _datasets_folder(tmp_path / "ds", table)
        expected = f"{path}: data-00000-of-00001.arrow: 2 columns named 'sentence1': which to read is ambiguous"
    elif kind == "sqlite-query":
        path = _sqlite_renamed(tmp_path / "pairs.db", b"pairs", [b"a", b"b", b"c"])
        options.query = "SELECT a AS sentence1, b AS sentence2, a AS sentence1, c AS score FROM pairs"
        expected = f"{path}: 2 columns named 'sentence1': which to read is ambiguous"
    else:
        path = tmp_path / "twice.jsonl"
        path.write_text('{"sentence1": "a", "sentence2": "b", "sentence1": "c", "score": 1}\n'
                        '{"sentence1": "a", "sentence2": "b", "score": 1, "x": {"sentence1": 1, "sentence1": 2}}\n')
        expected = f"{path}:1: field 'sentence1' given more than once: which to read is ambiguous"
        pairs, source = read_pairs(path, SourceOptions(policy="skip"))  # a repeat in a nested object is no matter
        assert pairs.s1 == ["a"] and source.report.problems == [expected]
    with pytest.raises(BadInputError) as e:
        read_pairs(path, options)
    assert str(e.value) == expected


@pytest.mark.parametrize("ext", [".parquet", ".db", ""])
def test_a_file_whose_own_name_is_not_utf8_opens(tmp_path, ext):
    """pyarrow and SQLite URIs took the path as UTF-8 text (UnicodeEncodeError, exit 70); the text
    formats open it through Python already. The name is escaped where a message shows it."""
    path = tmp_path / os.fsdecode(b"caf\xe9" + ext.encode())
    if ext == ".parquet":
        with open(path, "wb") as f:
            pq.write_table(_arrow_table(["sentence1", "sentence2", "score"]), f)
    elif ext == ".db":
        _sqlite_renamed(path, b"pairs", [b"sentence1", b"sentence2", b"score"])
    else:  # a datasets folder, and a data file in it, so named
        _datasets_folder(path, _arrow_table(["sentence1", "sentence2", "score"]), os.fsdecode(b"d\xe9.arrow"))
    pairs, _ = read_pairs(path, SourceOptions())
    assert pairs.s1 == ["A fine sentence."] and list(pairs.scores) == [2.5]
    assert _problem(path, columns=Columns(s1_col="text")).startswith(f"{tmp_path}/caf\\udce9{ext}: no column 'text'")


def test_sqlite_messages_that_quote_bytes_that_are_not_utf8_are_one_line(tmp_path):
    """SQLite's own message can quote a name from a broken schema; sqlite3 then raised UnicodeDecodeError."""
    path = _sqlite_renamed(tmp_path / "broken.db", b"pairs", [b"caf\xe9", b"caf\xe9", b"score"])
    assert _problem(path) == (f"{path}: not a readable SQLite database (malformed database schema (pairs) - "
                              f"duplicate column name: caf\\xe9)")


@pytest.mark.parametrize("sep", ["\x0c", "\x1c", "\x85", "\u2028"])
def test_a_line_break_that_csv_does_not_break_at_in_a_header_name_keeps_the_tab_sniff(tmp_path, sep):
    """The first line was cut at any of str.splitlines()' breaks, so that the tabs after a form feed
    in a name went unseen and a tab-separated .csv was read as comma-separated."""
    path = tmp_path / "tabs.csv"
    path.write_text(f"a{sep}b\tsentence1\tsentence2\tscore\nx\tA fine sentence.\tAnother one.\t2.5\n", encoding="utf-8")
    pairs, source = read_pairs(path, SourceOptions())
    assert pairs.s1 == ["A fine sentence."] and source.description.startswith("tab-separated")


def test_a_datasets_data_file_name_is_escaped_in_messages(tmp_path):
    """A data file's name came into messages raw: a newline in it broke the line."""
    folder = _datasets_folder(tmp_path / "ds", _arrow_table(["sentence1", "sentence2", "score"]), "d\n.arrow")
    (folder / "d\n.arrow").write_bytes(b"not arrow")
    assert _problem(folder).startswith(f"{folder}: d\\n.arrow: not an Arrow stream file (")
