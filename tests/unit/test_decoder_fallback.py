"""The codec chain does not give up early: a codec's error passes the image to the next
capable codec, and only when every one fails is the file refused, naming each codec's reason.

The shared corpus has no file that CharLS alone rejects, so failures are injected: the codec
that decodes a file normally is made to fail, and the file must still decode (to the same
pixels for lossless syntaxes) whenever the corpus manifest says another codec of its chain
handles it. Everything runs in this process, with real codecs.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidInput, PlatformError
from services.decoder import codecs
from services.decoder.codecs import CHAINS, NATIVE_SYNTAXES
from services.decoder.core import decode_instance

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
JPEG_LS_CT = "cornerstone/CTImage.dcm_JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80.dcm"
CHARLS_VERDICT = "Decoding error: Invalid JPEG-LS stream, the encoded bit stream contains a ..."
LOSSLESS = {
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.8.1",
}
# Manifest columns: whether each pydicom plugin decodes the file on its own.
COLUMN = {"pylibjpeg": "dec_pylibjpeg", "gdcm": "dec_gdcm", "pillow": "dec_pillow",
          "pyjpegls": "dec_pyjpegls"}  # fmt: skip

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _failing(message: str) -> Callable[[codecs.PixelSpec], codecs.Decoded]:
    def fail(spec: codecs.PixelSpec) -> codecs.Decoded:
        raise RuntimeError(message)

    return fail


@pytest.fixture
def winners(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the candidates that returned pixels, in order, for every decode."""
    seen: list[str] = []
    for name, candidate in list(codecs._CANDIDATES.items()):

        def recording(
            spec: codecs.PixelSpec, _name: str = name, _candidate: codecs.Candidate = candidate
        ) -> codecs.Decoded:
            decoded = _candidate(spec)
            seen.append(_name)
            return decoded

        monkeypatch.setitem(codecs._CANDIDATES, name, recording)
    yield seen


# --- a reference decoder's rejection: continue, and ask for a second opinion --------------


def test_a_stream_charls_rejects_decodes_when_libjpeg_and_gdcm_agree(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("gdcm")
    data = (CORPUS / JPEG_LS_CT).read_bytes()
    expected = decode_instance(data).pixels
    monkeypatch.setitem(codecs._CANDIDATES, "pyjpegls", _failing(CHARLS_VERDICT))
    with caplog.at_level(logging.WARNING, logger="services.decoder.codecs"):
        image = decode_instance(data)
    np.testing.assert_array_equal(image.pixels, expected)
    assert expected.dtype == np.int16 and expected.shape == (1, 512, 512, 1)
    assert "with pylibjpeg and gdcm after pyjpegls (Decoding error: Invalid JPEG-LS" in caplog.text


def test_after_charls_rejects_a_decoders_output_that_another_contradicts_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("gdcm")
    libjpeg = codecs._CANDIDATES["pylibjpeg"]

    def garbage(spec: codecs.PixelSpec) -> codecs.Decoded:
        decoded = libjpeg(spec)
        return codecs.Decoded(decoded.pixels ^ 1, decoded.photometric, decoded.decoder)

    monkeypatch.setitem(codecs._CANDIDATES, "pyjpegls", _failing(CHARLS_VERDICT))
    monkeypatch.setitem(codecs._CANDIDATES, "pylibjpeg", garbage)
    with pytest.raises(InvalidInput) as caught:
        decode_instance((CORPUS / JPEG_LS_CT).read_bytes())
    reason = caught.value.reason
    assert "the JPEG-LS codestream is corrupt (pyjpegls: Decoding error: Invalid JPEG-LS" in reason
    assert reason.endswith("gdcm: its pixels differ from pylibjpeg's)")
    assert "\n" not in reason


def test_after_charls_rejects_an_unconfirmed_output_is_refused_with_every_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(codecs._CANDIDATES, "pyjpegls", _failing(CHARLS_VERDICT))
    monkeypatch.setitem(codecs._CANDIDATES, "gdcm", _failing("gdcm: unexpected marker"))
    with pytest.raises(InvalidInput) as caught:
        decode_instance((CORPUS / JPEG_LS_CT).read_bytes())
    reason = caught.value.reason
    order = [reason.index(f"{name}: ") for name in ("pyjpegls", "pylibjpeg", "gdcm")]
    assert order == sorted(order), reason  # each codec once, in chain order
    assert "pylibjpeg: decoded, but no second decoder could confirm it" in reason


def test_a_codec_that_is_not_a_reference_needs_no_second_opinion(
    monkeypatch: pytest.MonkeyPatch, winners: list[str]
) -> None:
    # JPEG lossless: gdcm first; when it fails, pylibjpeg's pixels are taken as they are.
    pytest.importorskip("gdcm")
    relative = "pydicom-data/JPEG-LL.dcm"
    expected = decode_instance((CORPUS / relative).read_bytes()).pixels
    assert winners == ["gdcm"]
    monkeypatch.setitem(codecs._CANDIDATES, "gdcm", _failing("simulated"))
    np.testing.assert_array_equal(
        decode_instance((CORPUS / relative).read_bytes()).pixels, expected
    )


# --- the whole corpus, with the winning codec made to fail ----------------------------------


def _manifest() -> list[dict[str, str]]:
    with (CORPUS / "MANIFEST.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        r
        for r in rows
        if r["has_pixels"] == "1"
        and r["transfer_syntax"] in {str(ts) for ts in CHAINS}
        and r["transfer_syntax"] not in {str(ts) for ts in NATIVE_SYNTAXES}
    ]


ROWS = _manifest()


def test_the_corpus_has_compressed_files_of_every_chain_with_a_fallback() -> None:
    syntaxes = {r["transfer_syntax"] for r in ROWS}
    assert len(ROWS) > 100
    assert {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"} <= syntaxes


@pytest.mark.parametrize("row", ROWS, ids=[r["path"] for r in ROWS])
def test_the_winning_codec_failing_passes_the_file_to_the_next_capable_one(
    row: dict[str, str], monkeypatch: pytest.MonkeyPatch, winners: list[str]
) -> None:
    data = (CORPUS / row["path"]).read_bytes()
    try:
        expected = decode_instance(data).pixels
    except PlatformError:
        return  # refused as it is (a broken file): nothing to fall back from
    if not winners:
        pytest.fail("decoded without any codec of the chain")
    winner = winners[-1]
    chain = CHAINS[codecs.UID(row["transfer_syntax"])]
    monkeypatch.setitem(codecs._CANDIDATES, winner, _failing("injected failure"))
    others = [n for n in chain if n != winner and row.get(COLUMN.get(n, ""), "") == "ok"]
    # After the reference decoder fails, two others must agree.
    needed = 2 if winner in codecs._REFERENCE else 1
    winners.clear()
    try:
        image = decode_instance(data)
    except InvalidInput as err:
        assert f"{winner}: injected failure" in err.reason
        assert len(others) < needed, f"refused although {others} decode it: {err.reason}"
        return
    assert winners and winners[0] != winner
    if row["transfer_syntax"] in LOSSLESS:
        np.testing.assert_array_equal(image.pixels, expected)
    else:  # lossy: decoders differ by IDCT rounding, never by more than a few levels
        difference = np.abs(image.pixels.astype(np.int64) - expected.astype(np.int64))
        assert image.pixels.shape == expected.shape
        assert int(difference.max()) <= 8
