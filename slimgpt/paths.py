"""The one guard every output path goes through, and the atomic replacement of a folder.

What this is: `check_output` refuses a destination that could destroy something the user gave
us (an input model, a calibration file, a folder holding them, a file that slimgpt did not
write), and `replace_folder` puts a finished folder in place so that the destination is always
either the old complete folder or the new complete folder. What it is not: the checkpoint
format (checkpoint.py) or the command line (cli.py).

Rules:
- the path may not be empty; it is resolved through symbolic links and `..` first;
- it may not be, contain, or lie inside any input (model folder or file, calibration file);
- an existing destination is replaced only with force=True, and even then only when slimgpt
  wrote it (`is_ours`: a checkpoint or export folder with slimgpt's manifest and nothing else in
  it, a report or oracle export of slimgpt's): nothing of the user's is ever deleted.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

MARKER = ".slimgpt-partial"      # the pid file inside temporary folders of earlier versions


class OutputPathError(ValueError):
    """A destination that slimgpt refuses to write (one clear message)."""


def check_output(path, *, inputs=(), force: bool = False, folder: bool = True,
                 is_ours: Callable[[Path], bool] | None = None) -> Path:
    """Validate a destination before any long work; return it resolved (symlinks, `..`).

    folder=True: a folder that must not exist, or be empty, or (with force) be ours.
    folder=False: a file that must not exist or (with force) be ours.
    """
    if path is None or not str(path).strip():
        raise OutputPathError("the output path is empty")
    out = Path(os.path.realpath(os.path.expanduser(str(path))))
    for src in inputs:
        if not src or not os.path.exists(src):
            continue
        real = Path(os.path.realpath(src))
        if out == real:
            raise OutputPathError(f"{path}: the output is the input {src}; choose another destination")
        if real in out.parents:
            raise OutputPathError(f"{path}: the output lies inside the input {src}; choose another destination")
        if out in real.parents:
            raise OutputPathError(f"{path}: the output contains the input {src}; choose another destination")
    if not out.parent.is_dir():
        raise OutputPathError(f"{out.parent}: the parent folder of the output does not exist")
    if os.path.lexists(out):
        kind = "folder" if folder else "file"
        if folder and not out.is_dir():
            raise OutputPathError(f"{path} exists and is not a folder")
        if not folder and out.is_dir():
            raise OutputPathError(f"{path} is a folder; give a file name")
        if folder and not any(out.iterdir()):
            return out
        if not force:
            raise OutputPathError(f"{path} exists{' and is not empty' if folder else ''}; pass --force to replace it")
        if is_ours is None or not is_ours(out):
            raise OutputPathError(f"{path}: this {kind} was not written by slimgpt (or holds files slimgpt did not "
                                  f"write); refusing to replace it even with --force")
    return out


# ----------------------------------------------------------------------------------------------
# Writing a folder atomically

def temporary_folder(out: Path) -> Path:
    """A hidden temporary folder next to `out` (same file system, so renames are atomic), named
    `.NAME.tmp-PID-XXXXXXXX`: the name alone tells a later run that the folder is slimgpt's and
    whether the process writing it still runs, at every moment up to the final rename (a marker
    file inside could not stay until then). Stale ones of dead processes are removed first."""
    clean_stale(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))


def clean_stale(out: Path) -> None:
    """Remove the temporaries of earlier interrupted writes to `out`: `.NAME.tmp-PID-*` and
    `.NAME.old-PID-*` (folders or files) of processes that no longer run, and folders of earlier
    versions marked with MARKER. An old folder set aside by a replacement killed before the new
    one was in place (replace_folder without RENAME_EXCHANGE) is first put back at `out`."""
    ours = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[a-z0-9_]+")
    for p in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        if p.is_symlink():
            continue
        named = ours.fullmatch(p.name)
        pid = int(named[2]) if named else _marked_pid(p)
        if pid is None or _alive(pid):
            continue
        if not p.is_dir():
            p.unlink()
            continue
        if named and named[1] == "old" and (p / out.name).is_dir() and not os.path.lexists(out):
            os.rename(p / out.name, out)
        shutil.rmtree(p, ignore_errors=True)


def _marked_pid(folder: Path) -> int | None:
    """The process id in MARKER, which earlier versions wrote into their temporary folders."""
    try:
        return int((folder / MARKER).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_folder(out: Path):
    """Write a folder atomically: yields a temporary folder to fill; on success it replaces
    `out` (finish_folder), on any failure it is removed and `out` is left as it was."""
    tmp = temporary_folder(out)
    try:
        yield tmp
        finish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish_folder(tmp: Path, out: Path) -> None:
    """Make the files of `tmp` durable and honour the user's umask, then put it at `out`."""
    mask = _umask()
    for p in tmp.iterdir():
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        fsync(p)
    os.chmod(tmp, 0o777 & ~mask)
    fsync(tmp)
    replace_folder(tmp, out)


def replace_folder(new: Path, out: Path) -> None:
    """Put the complete folder `new` at `out`, atomically from the user's point of view.

    When `out` exists, the two are swapped in one step (Linux renameat2 RENAME_EXCHANGE): at any
    moment `out` is either the old or the new folder; the old one, now at `new`'s name, is then
    deleted (a kill in between leaves it to clean_stale, by its name). Where the exchange is not
    available, the old folder is first moved into `.NAME.old-PID-*` (a short window in which
    `out` does not exist: a failure puts it back at once, a kill on the next run), then the new
    one renamed into place.
    """
    if not os.path.lexists(out):
        os.rename(new, out)
    elif _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
        aside = old / out.name
        try:
            os.rename(out, aside)
            os.rename(new, out)
        except BaseException:
            if os.path.lexists(aside) and not os.path.lexists(out):
                os.rename(aside, out)
            raise
        finally:
            if os.path.lexists(out):        # else the old folder waits in `old` for clean_stale
                shutil.rmtree(old, ignore_errors=True)
    fsync(out.parent)


def write_file(path: Path, data: bytes) -> None:
    """Write a file atomically (a temporary file in the same folder, then a rename)."""
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path):
    """Parsed JSON of a file, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    AT_FDCWD = -100
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.lru_cache(maxsize=None)
def _renameat2():
    """libc's renameat2, or None (find_library runs ldconfig: once per process)."""
    return getattr(ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True), "renameat2", None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp: Path, dst: Path) -> None:
    """Rename a finished temporary file over `dst` once its data is on the disk, so that a
    crash leaves either the old file or the whole new one, never a torn one."""
    fsync(tmp)
    os.replace(tmp, dst)
    fsync(Path(dst).parent)
