"""Pair sources: every format, the STS-B release, and every bad-input case with its location."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import dict_rows, stsb_rows, write_pairs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.common.errors import BadInputError
from toolkit.sources import Columns, PairSource, SourceOptions, read_pairs


def read(path, **kw):
    return read_pairs(path, SourceOptions(**kw))


def error_of(path, **kw) -> str:
    with pytest.raises(BadInputError) as e:
        read(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# -- the STS-B release --------------------------------------------------------------------------------
@pytest.mark.parametrize("split,n", [("train", 5749), ("dev", 1500), ("test", 1379)])
def test_stsb_release_rows_and_layout(stsb_dir, split, n):
    pairs, src = read(stsb_dir / f"sts-{split}.csv")
    assert len(pairs) == n and src.report.bad == 0
    assert src.reader.layout == "stsb" and src.score_range == (0.0, 5.0)
    # independent reference: plain split on tabs, first seven fields
    ref = stsb_rows(split)
    assert pairs.s1 == [r[5] for r in ref] and pairs.s2 == [r[6] for r in ref]
    np.testing.assert_array_equal(pairs.scores, [float(r[4]) for r in ref])
    assert pairs.groups == [r[0] for r in ref]
    assert pairs.ids == [str(i) for i in range(1, n + 1)]


def test_stsb_extra_fields_and_bare_quotes_kept_verbatim(stsb_dir):
    lines = (stsb_dir / "sts-train.csv").read_text(encoding="utf-8").splitlines()
    extra = [i for i, line in enumerate(lines) if len(line.split("\t")) > 7]
    quoted = [i for i, line in enumerate(lines) if '"' in line]
    assert extra and quoted
    pairs, _ = read(stsb_dir / "sts-train.csv")
    for i in extra[:20] + quoted[:20]:
        fields = lines[i].split("\t")
        assert (pairs.s1[i], pairs.s2[i]) == (fields[5], fields[6])


def test_chunked_reading_equals_whole(stsb_dir):
    src = PairSource(stsb_dir / "sts-dev.csv", SourceOptions(chunk_size=97))
    chunks = list(src.chunks())
    assert len(chunks) == 16 and all(len(c) <= 97 for c in chunks)
    whole, _ = read(stsb_dir / "sts-dev.csv")
    assert [s for c in chunks for s in c.s1] == whole.s1
    assert [i for c in chunks for i in c.ids] == whole.ids


# -- every format ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".parquet", ".db"])
def test_every_format_reads_the_same_pairs(tmp_path, ext):
    rows = dict_rows("dev", 50)
    path = write_pairs(tmp_path / f"pairs{ext}", rows)
    pairs, _ = read(path, columns=Columns(group_col="genre"), chunk_size=16)
    assert pairs.s1 == [r["sentence1"] for r in rows]
    assert pairs.s2 == [r["sentence2"] for r in rows]
    np.testing.assert_array_equal(pairs.scores, [r["score"] for r in rows])
    assert pairs.groups == [r["genre"] for r in rows]


def test_custom_columns_and_ids(tmp_path):
    rows = [{"pid": f"p{i}", "a": f"left {i}", "b": f"right {i}", "y": i / 10} for i in range(5)]
    path = write_pairs(tmp_path / "x.jsonl", rows)
    pairs, _ = read(path, columns=Columns(s1_col="a", s2_col="b", score_col="y", id_col="pid"))
    assert pairs.ids == [f"p{i}" for i in range(5)] and pairs.s2[3] == "right 3"


def test_sqlite_table_query_and_read_only(tmp_path):
    path = write_pairs(tmp_path / "pairs.db", dict_rows("dev", 30))
    pairs, _ = read(path, table="pairs")
    assert len(pairs) == 30
    pairs, _ = read(path, query="SELECT * FROM pairs WHERE score >= 4")
    assert len(pairs) == sum(r["score"] >= 4 for r in dict_rows("dev", 30))
    msg = error_of(path, query="DELETE FROM pairs")
    assert "query failed" in msg and "readonly" in msg.replace("-", "").replace(" ", "").lower()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM pairs").fetchone()[0] == 30


def test_bom_crlf_and_quoted_newlines_are_valid(tmp_path):
    path = tmp_path / "x.csv"
    text = 'sentence1,sentence2,score\r\n"A line\r\nbreak, and a ""quote""",plain,1.5\r\nsecond,"x, y",2\r\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    pairs, _ = read(path)
    assert pairs.s1 == ['A line\r\nbreak, and a "quote"', "second"]
    assert pairs.s2 == ["plain", "x, y"] and list(pairs.scores) == [1.5, 2.0]
    assert pairs.locs == [2, 4]  # the second record starts on line 4: the first spans two lines


def test_no_score_needed_for_prediction(tmp_path):
    path = write_pairs(tmp_path / "x.csv", [{"sentence1": "a", "sentence2": "b"}])
    pairs, _ = read(path, need_score=False)
    assert pairs.scores is None and pairs.s1 == ["a"]
    assert "no column 'score'" in error_of(path)


def test_limit(stsb_dir):
    pairs, _ = read(stsb_dir / "sts-train.csv", limit=123, chunk_size=50)
    assert len(pairs) == 123 and pairs.ids[-1] == "123"


# -- bad input: file level --------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: no such file"


def test_empty_file(tmp_path):
    for name, content in [("a.csv", b""), ("b.tsv", b"\xef\xbb\xbf\n  \n"), ("c.jsonl", b"")]:
        (tmp_path / name).write_bytes(content)
        assert error_of(tmp_path / name).endswith(": empty file")


def test_header_only(tmp_path):
    (tmp_path / "x.csv").write_text("sentence1,sentence2,score\n")
    assert error_of(tmp_path / "x.csv") == f"{tmp_path / 'x.csv'}: header only, no data rows"


def test_missing_column(tmp_path):
    write_pairs(tmp_path / "x.csv", [{"sentence1": "a", "text2": "b", "score": 1}])
    msg = error_of(tmp_path / "x.csv")
    assert msg == f"{tmp_path / 'x.csv'}:1: no column 'sentence2' in the header (columns: sentence1, text2, score)"
    write_pairs(tmp_path / "x.parquet", [{"sentence1": "a", "sentence2": "b"}])
    assert "no column 'score'" in error_of(tmp_path / "x.parquet")
    write_pairs(tmp_path / "x.db", [{"sentence1": "a", "sentence2": "b"}])
    assert "no column 'score'" in error_of(tmp_path / "x.db")


def test_binary_file(tmp_path):
    (tmp_path / "x.csv").write_bytes(bytes(range(256)) * 4)
    assert error_of(tmp_path / "x.csv").endswith("binary file (NUL bytes), not a text pair file")
    write_pairs(tmp_path / "real.parquet", dict_rows("dev", 3))
    (tmp_path / "disguised.csv").write_bytes((tmp_path / "real.parquet").read_bytes())
    assert "this is a Parquet file" in error_of(tmp_path / "disguised.csv")
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all" * 10)
    assert "not a readable Parquet file" in error_of(tmp_path / "x.parquet")
    (tmp_path / "x.db").write_bytes(b"not sqlite" * 200)
    assert "not a readable SQLite database" in error_of(tmp_path / "x.db")


def test_missing_sqlite_table(tmp_path):
    path = write_pairs(tmp_path / "pairs.db", dict_rows("dev", 3))
    assert error_of(path, table="train") == f"{path}: no table 'train' (tables: pairs)"
    assert "query failed" in error_of(path, query="SELECT * FROM nothing")


def test_unknown_extension(tmp_path):
    (tmp_path / "x.xlsx").write_text("a")
    assert "--format" in error_of(tmp_path / "x.xlsx")


# -- bad input: row level, with the right line ---------------------------------------------------------------
def csv_file(tmp_path, body: str, name="x.csv"):
    path = tmp_path / name
    path.write_text("sentence1,sentence2,score\n" + body, encoding="utf-8")
    return path


@pytest.mark.parametrize("row,problem", [
    (",b,1", "empty sentence1"),
    ("a,   ,1", "whitespace-only sentence2"),
    ("a,b,high", "score 'high' is not a number"),
    ("a,b,", "empty score"),
    ("a,b,nan", "score is NaN"),
    ("a,b,inf", "score is infinite"),
    ("a,b,-inf", "score is infinite"),
    ("a,b,5.5", "score 5.5 outside the declared range 0..5"),
    ("a,b", "too few fields: 2, the header has 3"),
    ("a,b,1,extra", "too many fields: 4, the header has 3"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, row, problem):
    path = csv_file(tmp_path, f"ok,fine,1\nok,fine,2\n{row}\nok,fine,3\n")
    assert error_of(path, score_range=(0, 5)) == f"{path}:4: {problem}"


def test_stsb_layout_too_few_fields(tmp_path):
    path = tmp_path / "s.csv"
    rows = ["\t".join(r) for r in stsb_rows("dev", 3)]
    rows.insert(2, "main-news\tfile\t2012\t0001\t3.0\tonly one sentence")
    path.write_text("\n".join(rows) + "\n")
    assert error_of(path) == f"{path}:3: too few fields: 6, the STS-B layout has 7"


def test_stsb_layout_score_outside_range(tmp_path):
    rows = stsb_rows("dev", 3)
    rows[1][4] = "7.2"
    path = tmp_path / "s.tsv"
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    assert error_of(path) == f"{path}:2: score 7.2 outside the declared range 0..5"


def test_invalid_utf8_row(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"sentence1,sentence2,score\nok,fine,1\nbad \xff\xfe byte,fine,2\n")
    assert error_of(path) == f"{path}:3: invalid UTF-8 in sentence1: byte 0xff at byte 5 of the field"
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"sentence1": "a", "sentence2": "b", "score": 1}\n'
                     b'{"sentence1": "\xff", "sentence2": "b", "score": 1}\n')
    assert error_of(path) == f"{path}:2: invalid UTF-8 (byte 0xff at byte 16)"


def test_broken_json_line_and_null_text(tmp_path):
    path = tmp_path / "x.jsonl"
    good = '{"sentence1": "a", "sentence2": "b", "score": 1}'
    path.write_text(f'{good}\n\n{{"sentence1": "a", "sentence2": \n{good}\n')
    assert error_of(path) == f"{path}:3: invalid JSON: Expecting value (column 33)"
    path.write_text(f'{good}\n{{"sentence1": null, "sentence2": "b", "score": 1}}\n')
    assert error_of(path) == f"{path}:2: null sentence1"
    path.write_text(f'{good}\n[1, 2]\n')
    assert error_of(path) == f"{path}:2: expected a JSON object, got list"
    path.write_text(f'{good}\n{{"sentence1": "a", "score": 1}}\n')
    assert error_of(path) == f"{path}:2: missing field 'sentence2' (fields: sentence1, score)"
    path.write_text(f'{good}\n{{"sentence1": "a", "sentence2": "b", "score": NaN}}\n')
    assert error_of(path) == f"{path}:2: score is NaN"


def test_null_text_and_score_in_tables(tmp_path):
    rows = dict_rows("dev", 4)
    rows[2]["sentence2"] = None
    path = write_pairs(tmp_path / "x.parquet", rows)
    assert error_of(path) == f"{path}:row 3: null sentence2"
    rows = dict_rows("dev", 4)
    rows[1]["score"] = None
    path = write_pairs(tmp_path / "x.db", rows)
    assert error_of(path) == f"{path}:row 2: null score"


def test_unbalanced_quote_is_reported_with_a_hint(tmp_path):
    path = csv_file(tmp_path, 'ok,fine,1\n"he said" loudly,fine,2\n')
    msg = error_of(path)
    assert msg.startswith(f"{path}:3: malformed CSV") and "--quoting none" in msg
    pairs, _ = read(path, quoting="none")
    assert pairs.s1 == ["ok", '"he said" loudly']


# -- skipping and collecting bad rows ---------------------------------------------------------------------------
def test_skip_bad_rows_counts_and_reports(tmp_path):
    body = "".join(f"s{i},t{i},{i % 5}\n" for i in range(20))
    body += ",empty,1\nx,y,oops\nx,y\n"
    path = csv_file(tmp_path, body)
    src = PairSource(path, SourceOptions(policy="skip", chunk_size=7))
    pairs = src.read_all()
    assert len(pairs) == 20 and src.report.bad == 3 and src.report.rows == 23
    assert src.report.problems == [f"{path}:22: empty sentence1", f"{path}:23: score 'oops' is not a number",
                                   f"{path}:24: too few fields: 2, the header has 3"]
    assert src.report.summary().startswith(f"{path}: skipped 3 bad rows of 23, kept 20; first: {path}:22")
    # ids stay the row numbers of the file, not of the kept rows
    assert pairs.ids[-1] == "20"


def test_skipped_rows_do_not_shift_ids(tmp_path):
    path = csv_file(tmp_path, "a,b,1\n,b,1\nc,d,2\n")
    pairs, _ = read(path, policy="skip")
    assert pairs.ids == ["1", "3"] and pairs.s1 == ["a", "c"]


def test_limit_stops_before_later_bad_rows(tmp_path):
    path = csv_file(tmp_path, "a,b,1\nc,d,2\n,bad,3\ne,f,4\n")
    pairs, src = read(path, limit=2)
    assert pairs.s1 == ["a", "c"] and src.report.rows == 2
    pairs, src = read(path, limit=3, policy="skip")
    assert pairs.s1 == ["a", "c", "e"] and src.report.bad == 1


# -- a Hugging Face datasets folder (save_to_disk), written by datasets 4.4.1 (tests/corpus/make_hf_dataset.py) --
HF = Path(__file__).resolve().parent / "corpus" / "hf_dataset"


@pytest.mark.parametrize("chunk_size", [1, 7, 13, 14, 40, 8192])
def test_datasets_folder_gives_what_the_same_rows_in_jsonl_give(chunk_size):
    """Three Arrow files of 14, 13 and 13 rows: chunks that cut across files and ones that do not.
    The JSONL copy of the rows, read by another reader, is the reference."""
    kw = dict(columns=Columns(id_col="pair_id"), score_range=(0.0, 5.0), policy="skip", chunk_size=chunk_size)
    got, got_src = read(HF / "pairs", **kw)
    ref, ref_src = read(HF / "pairs.jsonl", **kw)
    assert got_src.description.startswith("Hugging Face datasets")
    assert (got.s1, got.s2, got.ids) == (ref.s1, ref.s2, ref.ids) and len(got.s1) == 37
    np.testing.assert_array_equal(got.scores, ref.scores)
    assert got_src.report.bad == ref_src.report.bad == 3
    assert [e.split(": ", 1)[1] for e in got_src.report.problems] == \
           [e.split(": ", 1)[1] for e in ref_src.report.problems]
    assert [e.split(": ", 1)[0] for e in got_src.report.problems] == \
           [f"{HF / 'pairs'}:row {n}" for n in (7, 20, 33)]


def test_datasets_folder_bad_rows_fail_by_default_and_limit_stops_early():
    assert error_of(HF / "pairs", score_range=(0.0, 5.0)) == f"{HF / 'pairs'}:row 7: empty sentence1"
    pairs, _ = read(HF / "pairs", limit=5)
    assert pairs.s1 == [f"A man plays instrument {i}." for i in range(5)]


def test_datasets_folder_errors_are_one_line(tmp_path):
    assert error_of(HF / "dict") == (f"{HF / 'dict'}: a DatasetDict; name one of its splits, e.g. "
                                     f"{HF / 'dict' / 'test'} (splits: 'test', 'train')")
    assert "no column 'text'" in error_of(HF / "pairs", columns=Columns(s1_col="text"))
    broken = tmp_path / "broken"
    shutil.copytree(HF / "pairs", broken)
    (broken / "data-00001-of-00003.arrow").write_bytes(b"not arrow")
    assert "data-00001-of-00003.arrow: not an Arrow stream file" in error_of(broken, policy="skip")
    (broken / "state.json").write_text('{"_data_files": [{"filename": "../../etc/passwd"}]}')
    assert error_of(broken) == f"{broken / 'state.json'}: lists '../../etc/passwd', not a file of this folder"
    (broken / "state.json").write_text("{")
    assert error_of(broken).startswith(f"{broken / 'state.json'}: not a datasets save_to_disk state")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), keep=st.integers(0, 1904))
def test_datasets_folder_with_arbitrary_bytes_is_a_one_line_error_or_good_rows(tmp_path, data, keep):
    """Any bytes in place of an Arrow file (random, or a real one cut short): good rows or one clear
    line naming the folder, never another exception."""
    folder = tmp_path / f"d{abs(hash((data, keep)))}"
    shutil.copytree(HF / "pairs", folder)
    first = folder / "data-00000-of-00003.arrow"
    first.write_bytes(data if data else first.read_bytes()[:keep])
    try:
        pairs, _ = read(folder, policy="skip", score_range=(0.0, 5.0))
    except BadInputError as e:
        assert "\n" not in str(e) and str(e).startswith(str(folder))
    else:
        assert all(isinstance(s, str) for s in pairs.s1)
