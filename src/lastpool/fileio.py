"""Atomic writes: a file or folder appears complete or not at all, so no run leaves half-written output."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lastpool.errors import ConfigError

_CHUNK = 1 << 20


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (what a later mkdir would write into)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_writable_dir(folder: Path, failure: str) -> None:
    """The nearest existing ancestor of ``folder`` (missing ones are created when writing) must be a
    writable directory; probed with a temporary file, creating nothing. ``failure`` starts the message."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(f"{failure}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".lastpool-write-test")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{failure}: {exc.strerror or exc}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _shareable(path: Path) -> None:
    """The mode a plain ``open`` would give (mkstemp, behind the atomic writes, makes files private)."""
    if path.exists():
        os.chmod(path, 0o666 & ~_umask())


@contextmanager
def staged_dir(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; move it to ``target`` only if the block succeeds.

    With ``replace`` an existing ``target`` is swapped out (renamed aside, then deleted) only after the
    new folder is complete, so a failure keeps the old contents intact.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result should look like a mkdir
    try:
        yield tmp
        if target.exists():
            if not replace and any(target.iterdir()):
                raise FileExistsError(f"{target} already exists and is not empty")
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            old.rmdir()
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def default_cache_dir() -> Path:
    """Root of lastpool's caches: ``$LASTPOOL_CACHE`` or ``~/.cache/lastpool``."""
    return Path(os.environ.get("LASTPOOL_CACHE", "~/.cache/lastpool")).expanduser()


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (model files are too big to read at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
