"""DICOM facts more than one service relies on, declared once (values from PS3.3 / PS3.6)."""

from __future__ import annotations

# The three elements that can hold an image's pixels (PS3.3 C.7.6.3, C.7.6.24): integer,
# 32-bit float and 64-bit float. A valid image has exactly one.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
