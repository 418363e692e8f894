"""Atomic, durable writes: a reader (or a crash, or a power cut) never sees a half-written output.

Each output is written to a temporary name beside it, flushed to disk (fsync), renamed over the
final name, and the folder itself is fsync'd so that the rename survives a power cut too.
``output_lock`` keeps a second job off an output that a first one is still writing.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional

from toolkit.common.errors import ToolkitError, escape, first_line, shorten, show_path


def refuse_existing(out: Path, overwrite: bool, empty_ok: bool = False) -> None:
    """Commands write a new output folder; an existing one is replaced only when asked."""
    if out.exists() and not overwrite and not (empty_ok and out.is_dir() and not any(out.iterdir())):
        raise ToolkitError(f"{out}: already exists; choose another --out or pass --overwrite")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames and removals in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path`` (old content removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if path.exists():
            # rename() cannot replace a non-empty folder: move the old one aside first.
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# -- one job per output ------------------------------------------------------------------------------------
class OutputBusyError(ToolkitError):
    """Another job holds the output's lock: wait for it or stop it (never --restart it away)."""


def lock_path(out: str | os.PathLike, shard_tag: str = "") -> Path:
    """The lock file of an output (of one shard's share of an output folder): hidden, beside the
    output, in the real folder (two names for one folder share one lock)."""
    out = Path(os.path.abspath(out))
    name = f".{out.name}.{shard_tag.strip('-')}.lock" if shard_tag else f".{out.name}.lock"
    return Path(os.path.realpath(out.parent)) / name


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says, for a one-line message."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("shards"):
            return "jobs scoring shards of it hold it; each is named in its shard's lock file beside it"
        return (f"pid {int(info['pid'])} on {shorten(escape(str(info['host'])), 60)}, started "
                f"{shorten(escape(str(info['started'])), 40)}: {shorten(escape(str(info['command'])), 200)}")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return f"its lock file {show_path(path)} does not say which yet"


NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)  # flock on a filesystem without it (Lustre's default)


def _acquire(path: Path, shared: bool, out: object) -> Optional[int]:
    """An open descriptor of ``path`` holding its flock (None where the filesystem has no locks).
    Lock, then check that the file locked is still the one at ``path`` (a job that ends removes it
    while holding its lock; a job that opened it just before then holds a lock on a removed file):
    else open the new one and lock again."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise ToolkitError(f"{show_path(out)}: cannot create its lock file {show_path(path)} "
                               f"({first_line(e)})") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(f"{show_path(out)}: another toolkit score job is writing it ({_holder(path)}); "
                                  "wait for it to finish or stop it, then run this again") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in NO_LOCKS:
                raise ToolkitError(f"{show_path(out)}: cannot lock {show_path(path)} ({first_line(e)})") from None
            path.unlink(missing_ok=True)
            sys.stderr.write(f"toolkit: {show_path(out)}: this filesystem has no file locks ({first_line(e)}); "
                             "nothing keeps a second job off this output\n")
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        here = os.fstat(fd)
        if st is not None and (st.st_ino, st.st_dev) == (here.st_ino, here.st_dev):
            return fd
        os.close(fd)


def _release(fd: int, path: Path, shared: bool) -> None:
    """Remove the lock file while still holding its lock exclusively, then unlock (close). A shared
    holder unlocks, then removes it only if it can take it exclusively: of holders ending together,
    one can (unlocking first, where a failed upgrade would keep a shared lock, as NFS's may). A file
    left (removal refused) is harmless: the next job takes it over."""
    try:
        if shared:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another holder is still there; it removes the file
        path.unlink(missing_ok=True)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def output_lock(out: str | os.PathLike, shard_tag: str = "") -> Iterator[None]:
    """Hold ``out`` for this job until the block exits (however: the kernel drops a flock when the
    process dies, and the next job takes over a lock file a killed one left). A second job on the
    same output is refused in one line naming the first; read or write nothing of ``out`` before
    this. Shards of one output folder run side by side: each holds the folder's lock shared and its
    own shard's exclusively; an unsharded job holds the folder's exclusively (its --restart removes
    every shard's parts). Our own, not filelock's: it leaves its lock file behind and records no
    holder to name in the refusal."""
    locks: list[tuple[int, Path, bool]] = []
    wanted = [(lock_path(out), bool(shard_tag))] + ([(lock_path(out, shard_tag), False)] if shard_tag else [])
    try:
        for path, shared in wanted:
            fd = _acquire(path, shared, out)
            if fd is None:
                break
            locks.append((fd, path, shared))
            _describe(fd, shared)
        yield
    finally:
        for fd, path, shared in reversed(locks):
            _release(fd, path, shared)


def _describe(fd: int, shared: bool) -> None:
    """Write who holds the lock into its file (shards: all the same words, as several hold it), for
    the message of a job that is refused; it also replaces what a killed job left there."""
    info = {"shards": True} if shared else {
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"), "command": shlex.join(sys.argv)}
    data = json.dumps(info).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
