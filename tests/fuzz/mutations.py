"""Mutations of real DICOM files for fuzzing the decoder, as hypothesis strategies.

A case is a seed file from the corpus plus 1-3 mutations: bit flips, byte overwrites,
truncation, insertion, deletion, changed header values (Rows, Columns, BitsAllocated,
TransferSyntaxUID, ...) and corrupted encapsulation (item lengths, Basic Offset Table,
delimiters, dropped/duplicated/swapped fragments). Mutations edit bytes, never re-encode with
pydicom, so they also apply to files an earlier mutation already broke. Shared by
tests/fuzz/test_fuzz_decoder.py and load_tests/fuzz_decoder.py.
"""

from __future__ import annotations

import csv
import random
import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
MAX_SEED_BYTES = 200_000
SEEDS_PER_SYNTAX = 3

US_FIELDS = {  # keyword: (group, element), VR US
    "SamplesPerPixel": (0x0028, 0x0002),
    "PlanarConfiguration": (0x0028, 0x0006),
    "Rows": (0x0028, 0x0010),
    "Columns": (0x0028, 0x0011),
    "BitsAllocated": (0x0028, 0x0100),
    "BitsStored": (0x0028, 0x0101),
    "HighBit": (0x0028, 0x0102),
    "PixelRepresentation": (0x0028, 0x0103),
}
TEXT_FIELDS = {  # keyword: ((group, element), VR, values)
    "NumberOfFrames": (
        (0x0028, 0x0008),
        b"IS",
        [b"0", b"1", b"2", b"3", b"120", b"-1", b"99999", b"", b"1.5", b"abc"],
    ),
    "PhotometricInterpretation": (
        (0x0028, 0x0004),
        b"CS",
        [
            b"MONOCHROME1",
            b"MONOCHROME2",
            b"RGB",
            b"YBR_FULL",
            b"YBR_FULL_422",
            b"PALETTE COLOR",
            b"YBR_RCT",
            b"YBR_ICT",
            b"XYZ",
            b"",
        ],
    ),
    "TransferSyntaxUID": (
        (0x0002, 0x0010),
        b"UI",
        [
            b"1.2.840.10008.1.2",
            b"1.2.840.10008.1.2.1",
            b"1.2.840.10008.1.2.2",
            b"1.2.840.10008.1.2.1.99",
            b"1.2.840.10008.1.2.5",
            b"1.2.840.10008.1.2.4.50",
            b"1.2.840.10008.1.2.4.51",
            b"1.2.840.10008.1.2.4.57",
            b"1.2.840.10008.1.2.4.70",
            b"1.2.840.10008.1.2.4.80",
            b"1.2.840.10008.1.2.4.81",
            b"1.2.840.10008.1.2.4.90",
            b"1.2.840.10008.1.2.4.91",
            b"1.2.840.10008.1.2.4.201",
            b"1.2.840.10008.1.2.4.100",
            b"1.2.3.4",
            b"",
        ],
    ),
}
INTERESTING_US = [0, 1, 2, 3, 4, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 64, 255, 256, 4096]
INTERESTING_US += [32767, 32768, 65534, 65535]
FRAGMENT_EDITS = ("length", "offsets", "delimiter", "drop", "duplicate", "swap", "cut")
ITEM = b"\xfe\xff\x00\xe0"
SEQUENCE_END = b"\xfe\xff\xdd\xe0"


@dataclass(frozen=True)
class Mutation:
    """One edit; positions are taken modulo the length of the bytes it is applied to."""

    kind: str
    position: int = 0
    amount: int = 0
    payload: bytes = b""
    field: str = ""

    def apply(self, data: bytes) -> bytes:
        return _APPLY[self.kind](self, data)


@dataclass(frozen=True)
class Case:
    seed: str
    mutations: tuple[Mutation, ...]

    def data(self) -> bytes:
        data = seed_bytes(self.seed)
        for mutation in self.mutations:
            data = mutation.apply(data)
        return data


def seed_paths() -> list[str]:
    """Per transfer syntax, the smallest corpus files (< 200 kB) pydicom's plugins decode."""
    with (CORPUS / "MANIFEST.csv").open(newline="") as file:
        rows = [
            r
            for r in csv.DictReader(file)
            if r["has_pixels"] == "1"
            and int(r["size"]) < MAX_SEED_BYTES
            and "ok" in (r["dec_native_or_rle"], r["dec_pylibjpeg"])
        ]
    by_syntax: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_syntax[row["transfer_syntax"]].append(row)
    return sorted(
        row["path"]
        for group in by_syntax.values()
        for row in sorted(group, key=lambda r: (int(r["size"]), r["path"]))[:SEEDS_PER_SYNTAX]
    )


_SEED_CACHE: dict[str, bytes] = {}


def seed_bytes(path: str) -> bytes:
    if path not in _SEED_CACHE:
        _SEED_CACHE[path] = (CORPUS / path).read_bytes()
    return _SEED_CACHE[path]


def cases(seeds: list[str]) -> st.SearchStrategy[Case]:
    return st.builds(
        Case, st.sampled_from(seeds), st.lists(mutations(), min_size=1, max_size=3).map(tuple)
    )


def mutations() -> st.SearchStrategy[Mutation]:
    anywhere = st.integers(0, 2**31 - 1)
    us_values = st.sampled_from(INTERESTING_US) | st.integers(0, 65535)
    return st.one_of(
        st.builds(Mutation, st.just("flip"), anywhere, st.integers(0, 7)),
        st.builds(
            Mutation, st.just("overwrite"), anywhere, payload=st.binary(min_size=1, max_size=8)
        ),
        st.builds(Mutation, st.just("truncate"), anywhere),
        st.builds(
            Mutation, st.just("insert"), anywhere, payload=st.binary(min_size=1, max_size=64)
        ),
        st.builds(Mutation, st.just("delete"), anywhere, st.integers(1, 256)),
        st.builds(
            Mutation,
            st.just("us_field"),
            amount=us_values,
            field=st.sampled_from(sorted(US_FIELDS)),
        ),
        st.sampled_from(sorted(TEXT_FIELDS)).flatmap(
            lambda name: st.builds(
                Mutation,
                st.just("text_field"),
                field=st.just(name),
                payload=st.sampled_from(TEXT_FIELDS[name][2]),
            )
        ),
        st.builds(
            Mutation,
            st.just("fragment"),
            st.integers(0, 8),
            st.integers(0, 2**32 - 1),
            field=st.sampled_from(FRAGMENT_EDITS),
        ),
    )


# --- byte edits -----------------------------------------------------------------------------


def _flip(m: Mutation, data: bytes) -> bytes:
    if not data:
        return data
    at = m.position % len(data)
    return data[:at] + bytes([data[at] ^ (1 << (m.amount % 8))]) + data[at + 1 :]


def _overwrite(m: Mutation, data: bytes) -> bytes:
    at = m.position % max(1, len(data))
    return data[:at] + m.payload + data[at + len(m.payload) :]


def _truncate(m: Mutation, data: bytes) -> bytes:
    return data[: m.position % max(1, len(data))]


def _insert(m: Mutation, data: bytes) -> bytes:
    at = m.position % (len(data) + 1)
    return data[:at] + m.payload + data[at:]


def _delete(m: Mutation, data: bytes) -> bytes:
    at = m.position % max(1, len(data))
    return data[:at] + data[at + max(1, m.amount) :]


def _us_field(m: Mutation, data: bytes) -> bytes:
    """A new value for a US attribute, in whichever encoding the file uses."""
    group, element = US_FIELDS[m.field]
    for order, vr_header in (
        ("<", b"US\x02\x00"),
        ("<", b"\x02\x00\x00\x00"),
        (">", b"US\x00\x02"),
    ):
        at = data.find(struct.pack(f"{order}HH", group, element) + vr_header)
        if at >= 0:
            start = at + 8
            return data[:start] + struct.pack(f"{order}H", m.amount) + data[start + 2 :]
    return data


def _text_field(m: Mutation, data: bytes) -> bytes:
    """A new value (and length) for a string attribute; the group length is left stale."""
    (group, element), vr, _ = TEXT_FIELDS[m.field]
    value = m.payload + (b"\x00" if vr == b"UI" else b" ") * (len(m.payload) % 2)
    for order, explicit in (("<", True), (">", True), ("<", False)):
        tag = struct.pack(f"{order}HH", group, element)
        at = data.find(tag + vr) if explicit else data.find(tag)
        if at < 0:
            continue
        if at + 8 > len(data):  # the element header itself was cut off
            return data
        if explicit:
            length = struct.unpack(f"{order}H", data[at + 6 : at + 8])[0]
            header = tag + vr + struct.pack(f"{order}H", len(value))
            return data[:at] + header + value + data[at + 8 + length :]
        length = struct.unpack("<I", data[at + 4 : at + 8])[0]
        if length > 64:  # not this element after all
            return data
        return data[:at] + tag + struct.pack("<I", len(value)) + value + data[at + 8 + length :]
    return data


def _items(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each item of the last encapsulated Pixel Data, BOT first."""
    starts = [
        data.rfind(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"),
        data.rfind(b"\xe0\x7f\x10\x00\xff\xff\xff\xff"),
    ]
    header = max(starts)
    if header < 0:
        return []
    at = header + (12 if header == starts[0] else 8)
    found = []
    while at + 8 <= len(data) and data[at : at + 4] == ITEM:
        length = struct.unpack("<I", data[at + 4 : at + 8])[0]
        found.append((at, length))
        if length == 0xFFFFFFFF:
            break
        at += 8 + length
    return found


def _fragment(m: Mutation, data: bytes) -> bytes:
    items = _items(data)
    if not items:
        return _flip(Mutation("flip", m.amount, m.position), data)  # not encapsulated
    index = m.position % len(items)
    at, length = items[index]
    end = min(len(data), at + 8 + length)
    rng = random.Random(m.amount)
    if m.field == "length":
        new = rng.choice(
            [0, 1, 3, length - 1, length + 1, 2 * length, 0xFFFFFFFF, rng.randrange(2**32)]
        )
        return data[: at + 4] + struct.pack("<I", new % 2**32) + data[at + 8 :]
    if m.field == "offsets":  # the Basic Offset Table: wrong, or present when it was empty
        count = max(1, len(items) - 1)
        table = struct.pack(f"<{count}I", *(rng.randrange(2**20) for _ in range(count)))
        first, first_length = items[0]
        return (
            data[:first]
            + ITEM
            + struct.pack("<I", len(table))
            + table
            + data[first + 8 + first_length :]
        )
    if m.field == "delimiter":
        return data[:at] + SEQUENCE_END + data[at + 4 :]
    if m.field == "drop":
        return data[:at] + data[end:]
    if m.field == "duplicate":
        return data[:end] + data[at:end] + data[end:]
    if m.field == "swap" and index + 1 < len(items):
        after, after_length = items[index + 1]
        after_end = min(len(data), after + 8 + after_length)
        return data[:at] + data[after:after_end] + data[at:end] + data[after_end:]
    # "cut": half the fragment's bytes go, its length field stays
    return data[: at + 8 + length // 2] + data[end:]


_APPLY = {
    "flip": _flip,
    "overwrite": _overwrite,
    "truncate": _truncate,
    "insert": _insert,
    "delete": _delete,
    "us_field": _us_field,
    "text_field": _text_field,
    "fragment": _fragment,
}
