"""Mutation fuzzing of the decoder through its worker pool (CI size: 2,000 cases).

Property: every mutated corpus file either decodes to a 4-D image or fails with a
PlatformError whose status is INVALID_ARGUMENT or RESOURCE_EXHAUSTED and whose reason is one
printable line: a codec crash or hang is contained by the pool and reported as such, nothing
escapes as another exception (INTERNAL), nothing hangs. Below it, regression tests for what
fuzzing found. The long run is load_tests/fuzz_decoder.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import FRAGMENT_EDITS, Case, Mutation, cases, mutations, seed_bytes, seed_paths
from pydicom.pixels import pixel_array

from services.common.errors import InvalidInput, PlatformError, Status
from services.decoder.core import DecodeLimits
from services.decoder.pool import DecoderPool

SEEDS = seed_paths()
# Smaller than the service's limits: a mutated Rows or NumberOfFrames then costs a quick
# TooLarge instead of a big allocation, and the cases stay fast.
LIMITS = DecodeLimits(max_pixels=2**24, max_decoded_bytes=2**26)
EXPECTED_CODES = (Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED)
OUTCOMES: Counter[str] = Counter()
CONTAINED: list[str] = []


@pytest.fixture(scope="module")
def pool(request: pytest.FixtureRequest) -> Iterator[DecoderPool]:
    # A seed decodes in well under a second; a mutated JPEG-LS stream can keep CharLS busy
    # for 15 s, and each such case costs the whole timeout.
    with DecoderPool(workers=2, timeout_seconds=3, memory_bytes=2**30) as running:
        running.start()
        yield running
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and OUTCOMES:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nfuzz outcomes: {dict(OUTCOMES.most_common())}")
            for line in CONTAINED[:10]:
                reporter.write_line(f"  contained: {line}")


def check(pool: DecoderPool, case: Case) -> str:
    """Decode one case through the pool; the outcome's name, or an AssertionError."""
    try:
        image = pool.decode(case.data(), LIMITS)
    except PlatformError as err:
        reason = err.reason
        assert err.code in EXPECTED_CODES, f"{type(err).__name__}: {reason}"
        assert reason.strip() and reason.isprintable() and "Traceback" not in reason, repr(reason)
        if "decoder process" in reason or "took longer" in reason:
            CONTAINED.append(f"{reason.split(': ', 1)[-1]} <- {case}")
            return "crash or hang, contained"
        return type(err).__name__
    assert image.pixels.ndim == 4 and image.pixels.size > 0
    return "decoded"


def test_seeds_cover_the_transfer_syntaxes() -> None:
    assert len(SEEDS) >= 25


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(case=cases(SEEDS), cut=st.integers(0, 2**31 - 1), more=st.lists(mutations(), max_size=3))
def test_mutations_apply_to_any_bytes(case: Case, cut: int, more: list[Mutation]) -> None:
    """Guards the fuzzer itself: every edit applies to a cut-off or already broken file too,
    replays exactly (a failing case is reproducible from its printed mutations) and does
    what its kind says, no more: a mutation that silently rewrote the whole file, or nothing
    ever, would fuzz something else than the report claims."""
    data = case.data()
    data = data[: cut % (len(data) + 1)]
    for mutation in more:
        before, data = data, mutation.apply(data)
        _expect_edit(mutation, before, data)


def _common_ends(a: bytes, b: bytes) -> int:
    """How many bytes ``a`` and ``b`` share at their start plus at their end (not overlapping)."""
    shortest = min(len(a), len(b))
    head = next((i for i in range(shortest) if a[i] != b[i]), shortest)
    tail = next((i for i in range(shortest - head) if a[-1 - i] != b[-1 - i]), shortest - head)
    return head + tail


def _expect_edit(m: Mutation, before: bytes, after: bytes) -> None:
    """The contract of each kind of edit, stated as properties of its input and output."""
    assert type(after) is bytes, type(after)
    assert m.apply(before) == after, f"{m} does not replay"
    size = len(before)
    changed = sum(x != y for x, y in zip(before, after, strict=False))
    if m.kind == "flip":  # exactly one bit of one byte (nothing to flip in no bytes)
        assert len(after) == size
        assert sum(bin(x ^ y).count("1") for x, y in zip(before, after, strict=True)) == min(
            size, 1
        )
    elif m.kind == "overwrite":  # the payload lands inside, the rest is untouched
        assert m.payload in after
        assert size <= len(after) <= size + len(m.payload)
        assert _common_ends(before, after) >= len(after) - len(m.payload)
    elif m.kind == "truncate":  # a strict prefix (of something to cut)
        assert before.startswith(after) and len(after) < max(size, 1)
    elif m.kind == "insert":  # the payload added, every original byte kept in order
        assert len(after) == size + len(m.payload) and m.payload in after
        assert _common_ends(before, after) >= size
    elif m.kind == "delete":  # one run of bytes gone, the rest kept in order
        assert size - max(1, m.amount) <= len(after) <= size
        assert len(after) < size or size == 0
        assert _common_ends(before, after) >= len(after)
    elif m.kind == "us_field":  # one 16-bit value rewritten in place, if the file has it
        assert len(after) == size and changed <= 2
    elif m.kind == "text_field":  # one value (and its length) replaced, if the file has it
        assert after == before or m.payload in after
    else:
        assert m.kind == "fragment", m.kind
        assert after != before or size == 0 or m.field in ("swap", "cut", "length")


def test_every_kind_of_mutation_changes_a_seed() -> None:
    """Each kind of edit (and each fragment edit) does change some real file: none is a
    no-op the fuzzer would spend its examples on."""
    untouched = []
    for kind, extra in [
        ("flip", {"amount": 3}),
        ("overwrite", {"payload": b"\xde\xad"}),
        ("truncate", {}),
        ("insert", {"payload": b"\x00\x01"}),
        ("delete", {"amount": 16}),
        *(("us_field", {"amount": 12345, "field": f}) for f in ("Rows", "Columns")),
        ("text_field", {"field": "TransferSyntaxUID", "payload": b"1.2.3.4"}),
        *(("fragment", {"amount": 7, "field": f}) for f in FRAGMENT_EDITS),
    ]:
        mutation = Mutation(kind, position=1000, **extra)  # type: ignore[arg-type]
        if all(mutation.apply(seed_bytes(seed)) == seed_bytes(seed) for seed in SEEDS):
            untouched.append(mutation)
    assert untouched == []


@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases(SEEDS))
def test_mutated_files_decode_or_fail_with_a_domain_error(pool: DecoderPool, case: Case) -> None:
    OUTCOMES[check(pool, case)] += 1


# --- what the fuzzer found --------------------------------------------------------------


def _gdcm_pixels(data: bytes) -> int:
    """Runs in a worker: pydicom's GDCM plugin alone (core chooses its codecs itself)."""
    return int(pixel_array(BytesIO(data), decoding_plugin="gdcm").size)


def test_a_gdcm_abort_found_by_fuzzing_is_contained(pool: DecoderPool) -> None:
    """python-gdcm 3.2.6 throws a C++ exception nothing catches (gdcmJPEG2000Codec.cxx:796)
    on this JPEG 2000 file once its photometric interpretation says RGB: the process aborts."""
    pytest.importorskip("gdcm")
    case = Case(
        "pydicom-data/liver_nonbyte_aligned_j2k.dcm",
        (Mutation("text_field", field="PhotometricInterpretation", payload=b"RGB"),),
    )

    with pytest.raises(InvalidInput) as caught:
        pool.run(_gdcm_pixels, case.data())

    assert "the decoder process crashed (signal 6)" in caught.value.reason
    assert pool.run(_gdcm_pixels, Case(case.seed, ()).data()) == 3 * 510 * 510


def test_rle_frames_shorter_than_the_header_says_are_invalid_input(pool: DecoderPool) -> None:
    """pylibjpeg-rle 2.0 panics ("index out of bounds" in src/lib.rs, a pyo3 PanicException,
    which is a BaseException) when Rows/Columns no longer match the RLE segments; it used to
    escape the decoder as INTERNAL."""
    case = Case(
        "pydicom-testfiles/SC_rgb_rle_16bit.dcm",
        (
            Mutation("us_field", amount=23, field="Rows"),
            Mutation("us_field", amount=15, field="Columns"),
        ),
    )
    with pytest.raises(PlatformError) as caught:
        pool.decode(case.data(), LIMITS)

    assert caught.value.code == Status.INVALID_ARGUMENT, caught.value.reason


def test_a_corrupt_transfer_syntax_uid_is_not_quoted_raw(pool: DecoderPool) -> None:
    """A Transfer Syntax UID whose length swallowed the next elements (which may be patient
    data) used to be quoted raw, control characters included, in the reason."""
    case = Case("pydicom-testfiles/charset_files/chrFren.dcm", (Mutation("delete", 4107222, 78),))
    with pytest.raises(PlatformError) as caught:
        pool.decode(case.data(), LIMITS)

    reason = caught.value.reason
    assert caught.value.code == Status.INVALID_ARGUMENT
    assert reason.isprintable() and "ISO_IR" not in reason, repr(reason)  # the next element
