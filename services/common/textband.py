"""The text band burned into a result picture: what the picture shows, its status and that it
is not a diagnosis, light on dark, so what it means travels with its pixels.

Shared by the gateway's heatmap Secondary Capture (services/gateway/reports/capture.py) and the
CLI's quick-look PNGs (services/cli/quicklook.py), so that both say it in the same words and
the same type. Only numpy and Pillow draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Burned-in text: light on an opaque dark band, the size a 256 px picture stays legible at.
BAND_FONT_PX = 11
_BAND_PAD = 3
_BAND_INK = (255, 255, 255)
_BAND_PAPER = (0, 0, 0)
NOT_A_DIAGNOSIS = "AI output, not a diagnosis"


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font (no system font needed): scalable where Pillow has FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, width: int, face: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
    """``text`` in lines no wider than ``width`` px, broken at spaces (a word wider than that
    gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and face.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def text_band(width: int, texts: Sequence[str], font_px: int = BAND_FONT_PX) -> np.ndarray:
    """RGB uint8 rows (height x ``width``) with ``texts`` wrapped to the width, light on dark:
    a band to put above or over a picture so what it means travels with its pixels."""
    face = font(font_px)
    lines = [line for text in texts for line in _wrap(text, width - 2 * _BAND_PAD, face)]
    top, bottom = face.getbbox("Ag")[1::2]
    step = int(bottom) + 2
    height = 2 * _BAND_PAD + step * len(lines) - int(top)
    band = Image.new("RGB", (width, height), _BAND_PAPER)
    draw = ImageDraw.Draw(band)
    for number, line in enumerate(lines):
        draw.text((_BAND_PAD, _BAND_PAD - int(top) + number * step), line, _BAND_INK, font=face)
    return np.asarray(band)
