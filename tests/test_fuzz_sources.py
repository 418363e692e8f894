"""Every byte sequence either parses or fails in one clean line: property-based tests over every
reader (CSV, TSV, the STS-B release, JSONL, Parquet, SQLite) and ``toolkit check``.

Inputs (tests/source_fuzz.py): arbitrary bytes; seeds from tests/corpus mutated (truncated, bits
flipped, NUL, BOM, invalid UTF-8, lone surrogates, U+2028, CR/LF, quotes, 70 kB fields inserted);
and generated tables with odd header names, values and types (blobs, NaN/inf, non-UTF-8 strings in
Parquet and SQLite), mutated or not. The oracle (``source_fuzz.outcome``) is the property itself.
benchmarks/fuzz_sources.py runs the same generators for 10,000+ cases and counts defects.
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from source_fuzz import EXTENSIONS, case, outcome, seeds
from toolkit.errors import BadInputError
from toolkit.sources import PairSource, SourceOptions, read_pairs

BUDGET = settings(max_examples=300, deadline=None, database=None, derandomize=False,
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


def _problem(path: Path) -> str:
    with pytest.raises(BadInputError) as e:
        read_pairs(path, SourceOptions())
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
