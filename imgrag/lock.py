"""One writer per embedded store: an exclusive ``flock`` on a file beside the store.

The kernel releases the lock when its process dies, so a lock left by a killed run never
blocks the next one; the file keeps the holder's pid for the error message.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType

from imgrag.errors import StoreError, StoreLockedError

LOCK_NAME = "imgrag-writer.lock"


class WriterLock:
    """Exclusive, non-blocking writer lock on a store directory (a context manager)."""

    def __init__(self, store_dir: Path) -> None:
        self.path = Path(store_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            where = str(self.path.parent)
            raise StoreError(f"cannot use store directory {where!r}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise StoreLockedError(_locked_message(self.path, holder)) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _locked_message(path: Path, holder: str) -> str:
    return (
        f"store {str(path.parent)!r} is being written by pid {holder or '(unknown)'}"
        f" (writer lock {str(path)!r}); wait for it to finish, or use a Chroma server"
        " (--chroma-url) for concurrent writers"
    )


def check_unlocked(store_dir: Path) -> None:
    """Raise StoreLockedError when a live process holds the store's writer lock.

    Creates nothing: a quick probe before a run starts (the run still takes the lock).
    """
    path = Path(store_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:  # the store path is a file, or not readable
        raise StoreError(f"cannot use store directory {str(store_dir)!r}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        raise StoreLockedError(_locked_message(path, holder)) from None
    finally:
        os.close(fd)  # also releases the probe's shared lock


def writer_lock(chroma_url: str | None, chroma_path: Path) -> WriterLock | nullcontext[None]:
    """The lock an ingest holds: a file lock for an embedded store; none for a server."""
    return nullcontext() if chroma_url else WriterLock(chroma_path)
