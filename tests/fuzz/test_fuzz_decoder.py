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

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import Case, Mutation, cases, mutations, seed_paths
from pydicom.pixels import pixel_array

from services.common.errors import InvalidInput, PlatformError
from services.decoder.core import DecodeLimits
from services.decoder.pool import DecoderPool

SEEDS = seed_paths()
# Smaller than the service's limits: a mutated Rows or NumberOfFrames then costs a quick
# TooLarge instead of a big allocation, and the cases stay fast.
LIMITS = DecodeLimits(max_pixels=2**24, max_decoded_bytes=2**26)
EXPECTED_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
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
    """Guards the fuzzer itself: a mutation of a cut-off or already broken file is bytes."""
    data = case.data()
    data = data[: cut % (len(data) + 1)]
    for mutation in more:
        data = mutation.apply(data)
    assert isinstance(data, bytes)


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

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value.reason


def test_a_corrupt_transfer_syntax_uid_is_not_quoted_raw(pool: DecoderPool) -> None:
    """A Transfer Syntax UID whose length swallowed the next elements (which may be patient
    data) used to be quoted raw, control characters included, in the reason."""
    case = Case("pydicom-testfiles/charset_files/chrFren.dcm", (Mutation("delete", 4107222, 78),))
    with pytest.raises(PlatformError) as caught:
        pool.decode(case.data(), LIMITS)

    reason = caught.value.reason
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason.isprintable() and "ISO_IR" not in reason, repr(reason)  # the next element
