"""The UIDs of one build of result documents: random, or derived from the request's uid_seed.

A relay that analyses a study again (a retry, a re-sent association) and sends the same
``uid_seed`` gets documents with the same SOP Instance, Series Instance and tracking UIDs (and
FHIR ids), so that a PACS or an EHR files the second copy as the same object instead of a
duplicate. The n-th identifier a build asks for (n = 0, 1, ... in the builders' fixed order)
is ``2.25.`` and the integer of the first 16 bytes of sha256(f"{seed}/{n}") (a UUID-derived
UID, PS3.5 B.2); without a seed each is random, as before.

The generator is scoped by a context variable (:func:`seeded`), so the builders ask for
:func:`uid` or :func:`uuid` without passing a seed around, and concurrent builds (each in its
own thread, each with its own copy of the context) never share a counter.
"""

from __future__ import annotations

import hashlib
import uuid as _uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import highdicom as hd

from services.common.results import UID_SEED


class _Seeded:
    """The identifiers of one seeded build, in the order they are asked for."""

    def __init__(self, seed: str) -> None:
        self._seed = seed
        self._n = 0

    def next_bytes(self) -> bytes:
        digest = hashlib.sha256(f"{self._seed}/{self._n}".encode()).digest()
        self._n += 1
        return digest[:16]


_current: ContextVar[_Seeded | None] = ContextVar("report_uids", default=None)


@contextmanager
def seeded(seed: str) -> Iterator[None]:
    """Within the block, :func:`uid` and :func:`uuid` derive from ``seed`` counting from 0
    (``""``: random). ValueError for a seed outside UID_SEED: the gateway refuses those
    before any work (InvalidInput), so here it is a bug."""
    if seed and not UID_SEED.fullmatch(seed):
        raise ValueError("uid_seed must be 1 to 128 of A-Z a-z 0-9 . _ : -")
    token = _current.set(_Seeded(seed) if seed else None)
    try:
        yield
    finally:
        _current.reset(token)


def uid() -> hd.UID:
    """The next DICOM UID of this build: seeded (``2.25.<integer>``) or highdicom's random."""
    generator = _current.get()
    if generator is None:
        return hd.UID()
    return hd.UID(f"2.25.{int.from_bytes(generator.next_bytes(), 'big')}")


def uuid() -> _uuid.UUID:
    """The next UUID of this build (FHIR fullUrls): random (version 4), or seeded: the next 16
    bytes with the version and variant bits of an RFC 9562 version 8 (custom) UUID, as these
    are derived, not random."""
    generator = _current.get()
    if generator is None:
        return _uuid.uuid4()
    data = bytearray(generator.next_bytes())
    data[6] = (data[6] & 0x0F) | 0x80  # version 8
    data[8] = (data[8] & 0x3F) | 0x80  # variant RFC 4122/9562
    return _uuid.UUID(bytes=bytes(data))


def is_seeded() -> bool:
    """Whether this build's identifiers derive from a seed (a builder then also replaces the
    UIDs a library makes on its own)."""
    return _current.get() is not None
