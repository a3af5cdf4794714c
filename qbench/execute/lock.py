"""One session at a time per device, across every qbench process on this host.

Two runs timing blocks on one device at once measure each other (two CPU runs at once made bf16's
step many times slower). Each session holds an exclusive lock on a file named after the device (the GPU's
UUID, or `cpu`) in $QBENCH_LOCK_DIR (default: /tmp/qbench-locks) while its worker runs; a second
run waits, and says for whom. The kernel drops a lock held by a process that dies, however it dies.

The default folder is fixed, not under $TMPDIR: two runs with different TMPDIRs (or two users) must
find the same lock. It sits in a folder anyone can write to, so nothing there is trusted: the lock
folder must be a real directory (not a link), sticky where it is world-writable, and owned by root
or by this user unless it is shared like /tmp (mode 1777: the first user's qbench made it, and the
others' runs must share it); qbench sets its mode only on a folder it has just created. Lock files
are opened without following links and never truncated on open, and every later step works on the
open file, never the path again; anything else (a link, a FIFO, a hard link to another file) is
refused with one line. The folder's owner can still swap lock files and so break the mutual
exclusion (a timing hazard, as any job of theirs is), never make qbench write through a link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from qbench import settings
from qbench.errors import UserError

_FIX = "remove it, or set QBENCH_LOCK_DIR to an absolute folder of your own"


def _open_folder(folder: Path) -> int:
    """An fd of the lock folder, created (mode 1777: every user's qbench shares the device, so every
    user shares the lock) where it does not exist; refuses a folder qbench must not trust."""
    created = False
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(folder, 0o700)  # 1777 below, once it is known to be the folder this call made
        created = True
    except FileExistsError:
        pass
    except OSError as error:
        raise UserError(f"lock folder {folder} cannot be created ({error.strerror})", _FIX) from None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        why = f"cannot be opened ({error.strerror})"
        if error.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW | O_DIRECTORY on a link: either
            why = "is a symbolic link" if folder.is_symlink() else "is not a folder"
        raise UserError(f"lock folder {folder} {why}; qbench does not use it", _FIX) from None
    info = os.fstat(fd)
    shared = info.st_mode & stat.S_IWOTH and info.st_mode & stat.S_ISVTX  # like /tmp
    problem = ""
    if created:
        os.fchmod(fd, 0o1777)
    elif info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        problem = "world-writable without the sticky bit"
    elif info.st_uid not in (0, os.geteuid()) and not shared:
        problem = f"owned by uid {info.st_uid} (neither root nor this user) and not shared like /tmp (mode 1777)"
    if not problem and not os.access(folder, os.W_OK | os.X_OK):
        problem = "not writable"
    if problem:
        os.close(fd)
        raise UserError(f"lock folder {folder} is {problem}; qbench does not use it", _FIX)
    return fd


def lock_dir() -> Path:
    """The checked lock folder ($QBENCH_LOCK_DIR or /tmp/qbench-locks), created where missing."""
    folder = settings.lock_dir()
    os.close(_open_folder(folder))
    return folder


def lock_path(device_key: str) -> Path:
    return lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]+", "_", device_key) + ".lock")


def _open_lock(path: Path) -> tuple[int, bool]:
    """(fd, writable) of the lock file, created if missing; never follows a link, never truncates."""
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a planted FIFO does not hang the run
    create = os.O_RDWR | os.O_CREAT | os.O_EXCL
    fd, mode = -1, create
    try:
        for mode in (create, os.O_RDWR, os.O_RDONLY):
            try:
                fd = os.open(path, flags | mode, 0o666)
                break
            except FileExistsError:  # made before: open it as it is
                continue
            except PermissionError:  # another user's lock file: flock needs no write access
                if mode != os.O_RDWR:
                    raise
    except OSError as error:
        why = "is a symbolic link" if error.errno == errno.ELOOP else f"cannot be opened ({error.strerror})"
        raise UserError(f"lock file {path} {why}; qbench does not use it", _FIX) from None
    assert fd >= 0, path
    if mode == create:
        os.fchmod(fd, 0o666)  # another user's qbench writes its holder line into it too
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link to another file"
        raise UserError(f"lock file {path} is {what}; qbench does not use it", _FIX)
    writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    return fd, writable


def check(device_key: str) -> None:
    """The lock folder and this device's lock file are usable: for the parent, before any worker."""
    fd, _ = _open_lock(lock_path(device_key))
    os.close(fd)


@contextlib.contextmanager
def device_lock(device_key: str, holder: str, on_wait: Callable[[str], None] = lambda line: None) -> Iterator[None]:
    """Hold the device's lock for the body; `holder` (pid and command) is written into the lock file
    for whoever waits. Waiting is interruptible (Ctrl-C)."""
    path = lock_path(device_key)
    fd, writable = _open_lock(path)

    def say(text: str) -> None:
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)

    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 1000, 0).decode(errors="replace").strip() or "another process"
            on_wait(f"waiting for {device_key}: in use by {other}")
            began = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            on_wait(f"{device_key} free after {time.monotonic() - began:.0f} s")
        say(f"{holder} (since {time.strftime('%H:%M:%S')})")
        try:
            yield
        finally:
            say("")
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
