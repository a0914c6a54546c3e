"""Header elements whose length swallows the elements after them never leak identity.

The boundary-corruption set: a small CR with known PatientName, PatientID, PatientBirthDate
and AccessionNumber; for every element of its file (meta and data set), one variant per
following element, with the element's length stretched to end where that element ends (so
Modality may become ``'CR\\x10\\x00...PN...<patient name>'``). Every variant goes through the
running stack; no identity string may appear in any answer or in any service's log.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from synthetic import dataset, to_bytes

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import Stack

pytestmark = pytest.mark.integration

IDENTITY = {
    "PatientName": "QUIXOTE^ZEBULON",
    "PatientID": "PID8472951XK",
    "PatientBirthDate": "19400101",
    "AccessionNumber": "ACC93721Q",
}
# What must never be seen: each value, and the distinctive parts of the name.
NEEDLES = (*IDENTITY.values(), "QUIXOTE", "ZEBULON", "8472951", "93721")
# Explicit VR little endian: these VRs have a 4-byte length after 2 reserved bytes.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_PREAMBLE = 128 + 4  # preamble + "DICM"


@dataclass(frozen=True)
class Element:
    tag: tuple[int, int]
    length_at: int  # offset of the length field
    long: bool  # 4-byte length field
    value_at: int
    end: int


def _elements(data: bytes) -> list[Element]:
    """The top-level elements of an explicit VR little endian file, in order."""
    found, offset = [], _PREAMBLE
    while offset < len(data):
        group, number = struct.unpack_from("<HH", data, offset)
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            element = Element((group, number), offset + 8, True, offset + 12, offset + 12 + length)
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            element = Element((group, number), offset + 6, False, offset + 8, offset + 8 + length)
        found.append(element)
        offset = element.end
    return found


def _stretched(data: bytes, victim: Element, until: Element) -> bytes | None:
    length = until.end - victim.value_at
    if not victim.long and length > 0xFFFF:
        return None
    field = struct.pack("<I" if victim.long else "<H", length)
    return data[: victim.length_at] + field + data[victim.length_at + len(field) :]


def _tag(element: Element) -> str:
    return f"({element.tag[0]:04X},{element.tag[1]:04X})"


def boundary_corruptions(data: bytes) -> Iterator[tuple[str, bytes]]:
    elements = _elements(data)
    for i, victim in enumerate(elements):
        for until in elements[i + 1 :]:
            variant = _stretched(data, victim, until)
            if variant is not None:
                yield f"{_tag(victim)}->{_tag(until)}", variant


def _cr() -> bytes:
    ds = dataset(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 4096, bits_stored=12)
    for keyword, value in IDENTITY.items():
        setattr(ds, keyword, value)
    ds.StudyDate, ds.ViewPosition, ds.InstanceNumber = "20040101", "PA", 1
    ds.PixelSpacing, ds.WindowCenter, ds.WindowWidth = [0.2, 0.2], 2048, 4096
    return to_bytes(ds)


# Random hex the platform writes (request ids, digests) can hold a short needle such as
# "93721" by chance; such tokens carry no identity and are left out of the search.
_HEX_TOKEN = re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{32,64}(?![0-9a-fA-F])")


def _leaks(text: str | bytes) -> list[str]:
    haystack = text if isinstance(text, str) else text.decode("latin-1")
    haystack = _HEX_TOKEN.sub("", haystack)
    return [n for n in NEEDLES if n.upper() in haystack.upper()]


def test_the_corruption_set_stretches_every_element_over_every_later_one() -> None:
    data = _cr()
    elements = _elements(data)
    assert elements[-1].tag == (0x7FE0, 0x0010) and elements[-1].end == len(data)
    assert any(e.tag == (0x0010, 0x0010) for e in elements)  # PatientName is in the header
    variants = list(boundary_corruptions(data))
    assert len(variants) == len(elements) * (len(elements) - 1) // 2
    assert len({v for _, v in variants}) == len(variants)


def test_no_identity_in_any_answer_or_log_line(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    data = _cr()
    assert _leaks(data) and not _leaks(b"CR CHEST")  # the detector finds what it must
    variants = list(boundary_corruptions(data))
    assert len(variants) > 200

    def send(variant: bytes) -> tuple[str, bytes]:
        try:
            # A request id of our own: a random hex one can hold a needle like "93721".
            request = gateway_pb2.AnalyzeRequest(instances=[variant], client_request_id="phi")
            reply = gateway.Analyze(request, timeout=60)
        except grpc.RpcError as err:
            trailing = repr(err.trailing_metadata() or ())
            return err.code().name, f"{err.details()} {trailing}".encode()
        return "OK", reply.SerializeToString()

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(send, (v for _, v in variants)))
    answers = dict(zip((n for n, _ in variants), replies, strict=True))
    leaking_answers = {name: code for name, (code, body) in answers.items() if _leaks(body)}
    codes = {code for code, _ in answers.values()}
    assert not leaking_answers, f"identity in {len(leaking_answers)} answers: {leaking_answers}"
    assert "OK" in codes and len(codes) > 1  # some variants still decode, others are refused

    leaking_lines = [
        f"{log.name}: {line[:200]}"
        for log in sorted(Path(stack.run_dir, "logs").glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if _leaks(line)
    ]
    assert not leaking_lines, f"{len(leaking_lines)} log lines with identity: {leaking_lines[:5]}"
    # ...and the stack still serves a clean instance.
    assert gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[data])).findings
