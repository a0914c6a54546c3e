"""DICOM facts more than one service relies on, declared once (values from PS3.3 / PS3.6)."""

from __future__ import annotations

import re

# The three elements that can hold an image's pixels (PS3.3 C.7.6.3, C.7.6.24): integer,
# 32-bit float and 64-bit float. A valid image has exactly one.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# An Application Entity title (PS3.5 6.2, VR AE): at most 16 characters of the default
# repertoire without backslash or control characters; leading and trailing spaces are padding.
AE_TITLE_MAX = 16


def is_ae_title(value: str) -> bool:
    stripped = value.strip(" ")
    return (
        0 < len(stripped) <= AE_TITLE_MAX
        and all(" " <= ch <= "~" for ch in stripped)
        and "\\" not in stripped
    )


def checked_ae_title(value: str) -> str:
    """``value`` without padding, or ValueError that does not quote it (it came from a peer)."""
    if not is_ae_title(value):
        raise ValueError(
            f"not a DICOM AE title (1-{AE_TITLE_MAX} printable characters, no backslash)"
        )
    return value.strip(" ")


# Transfer syntaxes the decoder decodes (services/decoder/codecs.py CHAINS, checked equal by
# tests/unit/test_ingest_core.py): what the ingest accepts at association, so that what it
# stores as received can be analysed. Native first: an SCP prefers the first it supports.
DECODABLE_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.53",  # JPEG Spectral Selection (retired)
    "1.2.840.10008.1.2.4.55",  # JPEG Full Progression (retired)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
)

# A UID (PS3.5 9.1): dot-separated numbers without leading zeros, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.fullmatch(value) is not None
