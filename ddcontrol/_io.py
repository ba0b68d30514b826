"""Atomic file writes: datasets and checkpoints are never left half-written.

Files get the permissions a plain ``open`` would give them (``0o666`` less the umask for a new
file, the existing file's mode when it is replaced), so results can be shared.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ddcontrol.errors import DDControlError, WriteError

# A temporary file is removed by a later write when its writer (a process on this machine) is
# gone, or, when that cannot be told (written on another machine sharing the folder), once it is
# older than this many seconds.
_STALE_ANY_S = 3600.0


def _writer_tag() -> str:
    """``PID@HOST`` of this process: HOST a short hash of the machine's name."""
    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
    return f"{os.getpid()}@{host}"


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it: restore at once
    os.umask(mask)
    return mask


def describe_os_error(exc: OSError, path: str | os.PathLike) -> str:
    """A one-line reason for an ``OSError`` met while creating ``path`` or its folders."""
    path = Path(path)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        for parent in [path, *path.parents]:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({exc.filename or path})"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EISDIR:
        return f"{exc.filename or path} is a folder"
    return exc.strerror or str(exc)


def ensure_folder(folder: str | os.PathLike, what: str = "the output folder") -> Path:
    """Create ``folder`` (and its parents) if needed and check that files can be written in it.

    Raises
    ------
    WriteError
        A parent is a file, ``folder`` is a file, or the folder is not writable.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create {what} {folder}: "
                         f"{describe_os_error(exc, folder)}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write into {what} {folder}: permission denied")
    return folder


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files that killed writes of ``path`` left beside it; return them.

    A temporary file ``.NAME.PID@HOST.XXXXXXXX.tmp`` is stale when its writer, process PID of
    this machine, no longer runs; one written on another machine (a shared folder), or by an
    older ddcontrol without the tag, when it is over an hour old.
    """
    path = Path(path)
    removed = []
    now = time.time()
    pid, host = _writer_tag().split("@")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:-4].split(".")
        try:
            age = now - tmp.stat().st_mtime
        except OSError:
            continue
        writer = parts[0].split("@") if len(parts) == 2 else []
        if len(writer) == 2 and writer[0].isdigit():
            stale = age > _STALE_ANY_S or (writer[1] == host and writer[0] != pid
                                           and not _pid_alive(int(writer[0])))
        elif len(parts) == 1:  # written by an older ddcontrol (no tag in the name)
            stale = age > _STALE_ANY_S
        else:
            continue
        if stale:
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``.

    An interruption that Python sees (an exception, Ctrl-C) leaves the previous file (if any)
    intact and no temporary file. A write killed outright (SIGKILL, power loss) also leaves the
    previous file intact, but its temporary file ``.NAME.PID@HOST.XXXXXXXX.tmp`` remains beside
    ``path`` until the next write to ``path`` removes it (:func:`remove_stale_temporaries`).
    The file gets the mode a plain ``open`` would give it (umask honoured).

    Raises
    ------
    WriteError
        ``path`` is a folder, a parent is a file, or the file cannot be written (permission,
        disk full...).
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {describe_os_error(exc, path.parent)}") from exc
    remove_stale_temporaries(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~current_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp",
                                   dir=path.parent)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {describe_os_error(exc, path.parent)}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
            else:  # pragma: no cover - Windows: mkstemp's private mode, set by name
                os.chmod(tmp, mode)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, DDControlError):
            raise WriteError(f"cannot write {path}: {describe_os_error(exc, path)}") from exc
        raise
    return path
