"""Instances and results on stable storage: nothing is acknowledged before it is here.

Layout under the spool directory (one filesystem, so renames are atomic)::

    tmp/                              pynetdicom's chunked receive writes each C-STORE here
    instances/<study>/<sop>.dcm       as received (Part 10, the peer's transfer syntax)
    results/<key>/                    one stored result: response.json and its documents

"Durable" means the file's data and the directory entry that names it are both fsync'd
(POSIX makes no promise for a new name until its directory is synced: fsync(2) NOTES). A
kill -9 cannot show a missing fsync, because the page cache survives it; the tests block the
``fsync`` given here instead and check that no answer leaves before it returns.

The first copy of a SOP instance wins: a second one is stored only if the first is gone. It is
linked into place (``link(2)`` fails when the name exists), so two associations sending the same
instance at once cannot both believe they stored it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from services.common.dicom import is_uid

Fsync = Callable[[int], None]
_CHUNK = 1 << 20


class StoreOutcome(StrEnum):
    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # the same bytes again: nothing written
    CONFLICT = "conflict"  # the same SOP Instance UID with other bytes: the first kept


@dataclass(frozen=True)
class Stored:
    outcome: StoreOutcome
    sha256: str
    path: Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Spool:
    def __init__(self, root: Path, fsync: Fsync = os.fsync) -> None:
        self.root = root
        self._fsync = fsync
        for folder in (self.tmp, self.instances, self.results):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def sync_file(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def sync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def above_watermark(self, fraction: float) -> bool:
        usage = shutil.disk_usage(self.root)
        return usage.total > 0 and (usage.total - usage.free) / usage.total > fraction

    def study_dir(self, study_uid: str) -> Path:
        if not is_uid(study_uid):
            raise ValueError("not a DICOM UID")
        return self.instances / study_uid

    def store(self, received: Path, study_uid: str, sop_uid: str) -> Stored:
        """Make ``received`` (a finished temporary file on this filesystem) the study's copy of
        ``sop_uid``, durably; ``received`` is gone afterwards whatever the outcome."""
        if not is_uid(sop_uid):
            raise ValueError("not a DICOM UID")
        digest = sha256_of(received)
        folder = self.study_dir(study_uid)
        target = folder / f"{sop_uid}.dcm"
        try:
            if target.exists():
                return self._again(target, digest)
            self.sync_file(received)
            if not folder.is_dir():
                folder.mkdir(mode=0o700, exist_ok=True)
                self.sync_dir(self.instances)
            try:
                os.link(received, target)
            except FileExistsError:  # another association stored it meanwhile
                return self._again(target, digest)
            self.sync_dir(folder)
            return Stored(StoreOutcome.STORED, digest, target)
        finally:
            received.unlink(missing_ok=True)

    def _again(self, target: Path, digest: str) -> Stored:
        # The first copy may itself have been linked but not yet synced by a process that
        # died before answering: sync it now, since this answer acknowledges it.
        self.sync_file(target)
        self.sync_dir(target.parent)
        same = sha256_of(target) == digest
        return Stored(StoreOutcome.DUPLICATE if same else StoreOutcome.CONFLICT, digest, target)

    def study_files(self, study_uid: str) -> list[Path]:
        folder = self.study_dir(study_uid)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")

    def count(self, study_uid: str) -> int:
        return len(self.study_files(study_uid))

    def studies(self) -> list[str]:
        return sorted(p.name for p in self.instances.iterdir() if p.is_dir() and is_uid(p.name))

    def delete_study(self, study_uid: str) -> int:
        files = self.study_files(study_uid)
        shutil.rmtree(self.study_dir(study_uid), ignore_errors=True)
        return len(files)

    def sweep_tmp(self, older_than: float = 0.0) -> int:
        """Pieces of transfers that never finished (an aborted association leaves its file)."""
        cutoff = time.time() - older_than
        swept = 0
        for piece in self.tmp.iterdir():
            try:
                if piece.stat().st_mtime <= cutoff:
                    piece.unlink()
                    swept += 1
            except FileNotFoundError:
                continue
        return swept


class ResultStore:
    """One directory per result key, made whole in a temporary name and renamed into place."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self.root = spool.results

    @property
    def spool(self) -> Spool:
        return self._spool

    def path(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError("a result key is a hex digest")
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.path(key).is_dir()

    def put(self, key: str, files: Mapping[str, bytes]) -> bool:
        """Store ``files`` under ``key`` durably; False when a result was already there."""
        if any("/" in name or name.startswith(".") or not name for name in files):
            raise ValueError("result file names are plain")
        if self.exists(key):
            return False
        partial = self.root / f".{key}.{os.getpid()}.{time.monotonic_ns()}"
        partial.mkdir(mode=0o700)
        for name, data in files.items():
            target = partial / name
            with target.open("wb") as out:
                out.write(data)
                out.flush()
                self._spool._fsync(out.fileno())
        self._spool.sync_dir(partial)
        try:
            os.rename(partial, self.path(key))
        except OSError:  # the same result, stored by a redelivery racing this one
            shutil.rmtree(partial, ignore_errors=True)
            return False
        self._spool.sync_dir(self.root)
        return True

    def read(self, key: str) -> dict[str, bytes]:
        folder = self.path(key)
        if not folder.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}

    def delete(self, key: str) -> bool:
        folder = self.path(key)
        existed = folder.is_dir()
        shutil.rmtree(folder, ignore_errors=True)
        return existed

    def sweep_partial(self) -> None:
        for partial in self.root.glob(".*"):
            shutil.rmtree(partial, ignore_errors=True)
