"""A distribution-shift benchmark from STS-B's genres: train on two, test on the third.

For each held-out genre (captions, news, forum) a folder in the release layout, so that
``--data stsb:FOLDER`` trains on it directly:

    sts-train.csv   train-split rows of the two other genres
    sts-dev.csv     their dev-split rows (model selection, and the held-out set WiSE-FT chooses α on)
    sts-test.csv    their test-split rows (in-distribution test)
    sts-ood.csv     the held-out genre's dev- and test-split rows (shifted test; never trained or chosen on)
    sts-ood-dev.csv, sts-ood-test.csv   the same rows by split: where α is chosen on the shift itself
                    (``toolkit wise --choose-on``), choose on ood-dev and report ood-test

Lines are copied byte for byte, so the release's quirks (extra fields, bare quotes) stay as they are.
The held-out genre's train-split rows are left out: they would only enlarge the shifted test.
"""
from __future__ import annotations

from pathlib import Path

from toolkit.common.atomic_io import atomic_dir, write_json
from toolkit.common.errors import BadInputError
from toolkit.sources.stsb import SPLIT_FILES

GENRES = {"main-captions": "captions", "main-news": "news", "main-forum": "forum", "main-forums": "forum"}
HELD_OUT = ("captions", "news", "forum")


def _genre_lines(path: Path) -> list[tuple[str, bytes]]:
    """(genre, line) in file order."""
    lines = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            field = line.split(b"\t", 1)[0].decode("utf-8", "replace")
            genre = GENRES.get(field)
            if genre is None:
                raise BadInputError(f"{path}:{number}: unknown genre {field!r} (expected one of "
                                    f"{', '.join(sorted(GENRES))})")
            lines.append((genre, line if line.endswith(b"\n") else line + b"\n"))
    return lines


def write_genre_shift(stsb_dir: str | Path, out: str | Path) -> dict[str, dict[str, int]]:
    """Write the three held-out-genre folders under ``out``; returns their row counts."""
    from toolkit.sources import resolve_data_spec

    splits = {name: _genre_lines(path) for name, path in resolve_data_spec(f"stsb:{stsb_dir}").items()}
    out = Path(out)
    counts = {}
    for held in HELD_OUT:
        files = {SPLIT_FILES[name]: [line for g, line in splits[name] if g != held] for name in SPLIT_FILES}
        files["sts-ood.csv"] = [line for name in ("dev", "test") for g, line in splits[name] if g == held]
        for name in ("dev", "test"):
            files[f"sts-ood-{name}.csv"] = [line for g, line in splits[name] if g == held]
        with atomic_dir(out / f"heldout-{held}") as tmp:
            for name, lines in files.items():
                (tmp / name).write_bytes(b"".join(lines))
        counts[f"heldout-{held}"] = {name: len(lines) for name, lines in files.items()}
    write_json(out / "splits.json", {"source": str(Path(stsb_dir).resolve()), "counts": counts})
    return counts
