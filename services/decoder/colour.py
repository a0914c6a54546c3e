"""Stored values to the values the preprocessor gets: Bits Stored, YBR -> RGB, palettes.

Every decoder hands over stored values in the stored colour space, so each conversion below
runs exactly once per image, whichever decoder won.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

from services.common.errors import InvalidInput

_CHUNK = 1 << 20  # pixels per block: bounds the float32 temporaries at a few MB

# PS3.3 C.7.6.3.1.2 (YBR_FULL), as float32 like pydicom's convert_color_space, so that the
# result equals pydicom's on the same input (pydicom's matmul is ~4x slower on long clips).
_CR_TO_R = np.float32(1.402)
_CB_TO_G = np.float32(-0.114 * 1.772 / 0.587)
_CR_TO_G = np.float32(-0.299 * 1.402 / 0.587)
_CB_TO_B = np.float32(1.772)

YBR_FULL_LIKE = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_ICT"})


def fit_bits_stored(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """Clear the bits above Bits Stored, sign-extending signed values (PS3.5 8.1.1): bits
    outside Bits Stored may hold overlays or garbage and are not part of the value."""
    if pixels.dtype.kind not in "ui":
        return pixels
    width = pixels.dtype.itemsize * 8
    if not 0 < bits_stored < width:
        return pixels
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    if pixels.dtype.kind == "i":
        shift = pixels.dtype.type(width - bits_stored)
        np.left_shift(pixels, shift, out=pixels)
        np.right_shift(pixels, shift, out=pixels)
    else:
        np.bitwise_and(pixels, pixels.dtype.type((1 << bits_stored) - 1), out=pixels)
    return pixels


def ybr_full_to_rgb(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """YBR_FULL (also YBR_FULL_422 once upsampled, and YBR_ICT) -> RGB, in place, vectorised
    in blocks. Offsets and range follow Bits Stored (128 and 255 for 8-bit data)."""
    if pixels.dtype.kind != "u" or pixels.shape[-1] != 3:
        raise InvalidInput(
            f"YBR colour data must be 3 unsigned samples per pixel, got {pixels.shape[-1]} "
            f"of {pixels.dtype}"
        )
    pixels = np.ascontiguousarray(pixels)
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    flat = pixels.reshape(-1, 3)
    bits = min(bits_stored, pixels.dtype.itemsize * 8)
    half, top = np.float32(1 << (bits - 1)), np.float32((1 << bits) - 1)
    for start in range(0, flat.shape[0], _CHUNK):
        block = flat[start : start + _CHUNK]
        y = block[:, 0].astype(np.float32)
        cb = block[:, 1].astype(np.float32)
        cb -= half
        cr = block[:, 2].astype(np.float32)
        cr -= half
        # Same operation order as pydicom's y*1 + cb*m1 + cr*m2, so the rounding matches.
        red = y + cr * _CR_TO_R
        green = y + cb * _CB_TO_G
        green += cr * _CR_TO_G
        blue = y + cb * _CB_TO_B
        for channel, values in enumerate((red, green, blue)):
            values += np.float32(0.5)
            np.floor(values, out=values)
            np.clip(values, 0, top, out=values)
            block[:, channel] = values
    return pixels


def palette_to_rgb(pixels: np.ndarray, ds: Dataset, little_endian: bool) -> tuple[np.ndarray, int]:
    """PALETTE COLOR indices -> RGB through the file's palette; returns (rgb, bits per entry).

    pydicom reads non-segmented OW LUT data in the machine's byte order: for Explicit VR Big
    Endian files the tables are byte-swapped here first (its segmented path gets it right).
    """
    if "RedPaletteColorLookupTableDescriptor" not in ds:
        raise InvalidInput("PALETTE COLOR image has no Red Palette Color Lookup Table Descriptor")
    if pixels.shape[-1] != 1:
        raise InvalidInput(
            f"PALETTE COLOR image has {pixels.shape[-1]} samples per pixel; 1 expected"
        )
    palette = ds if little_endian else _little_endian_palette(ds)
    try:
        rgb = _apply_palette(pixels[..., 0], palette)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise InvalidInput(f"the palette colour lookup table is unusable: {exc}") from exc
    if rgb.shape[-1] == 4:  # an alpha palette: the preprocessor takes RGB
        rgb = rgb[..., :3]
    descriptor = ds.RedPaletteColorLookupTableDescriptor
    nominal = int(descriptor[2]) if len(descriptor) == 3 else 0
    bits = nominal if nominal in (8, 16) and nominal <= rgb.dtype.itemsize * 8 else 0
    return np.ascontiguousarray(rgb), bits or rgb.dtype.itemsize * 8


_PALETTE_DATA = tuple(f"{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue", "Alpha"))


def _apply_palette(indices: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom's apply_color_lut, with the common case (plain 8- or 16-bit tables) as one
    gather through an (entries, channels) table instead of one strided pass per channel: the
    same pixels, about twice as fast. Segmented and unusual tables go to pydicom as they are."""
    tables = [ds.get(keyword) for keyword in _PALETTE_DATA]
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    if (
        descriptor is None
        or len(descriptor) != 3
        or not all(isinstance(t, bytes) for t in tables[:3])
        or getattr(ds, "PixelPresentation", None) in ("MIXED", "COLOR")
    ):
        return np.asarray(apply_color_lut(indices, ds))
    entries, first_mapped = int(descriptor[0]) or 2**16, int(descriptor[1])
    present = [t for t in tables if t]
    if len({len(t) for t in present}) != 1 or len(present[0]) not in (entries, 2 * entries):
        return np.asarray(apply_color_lut(indices, ds))
    dtype = np.dtype(np.uint8 if len(present[0]) == entries else np.uint16)
    table = np.stack([np.frombuffer(t, dtype=dtype) for t in present], axis=1)
    # As pydicom: indices below the first mapped value take entry 0, the offset is taken in
    # the table's integer type, and the result is clipped to the last entry.
    offset = np.where(indices >= first_mapped, indices - np.int32(first_mapped), 0)
    position: npt.NDArray[np.unsignedinteger[Any]] = np.clip(offset.astype(dtype), 0, entries - 1)
    gathered: np.ndarray = np.take(table, position, axis=0)  # contiguous (..., channels)
    return gathered


def _little_endian_palette(ds: Dataset) -> Dataset:
    """The palette module of a big-endian file with 16-bit OW table data byte-swapped."""
    palette = ds.group_dataset(0x0028)  # new Dataset; replacing its elements leaves ds alone
    palette.file_meta = ds.file_meta
    for keyword in _PALETTE_DATA:
        if keyword not in ds:
            continue
        element = ds[keyword]
        if isinstance(element.value, bytes) and len(element.value) % 2 == 0:
            swapped = np.frombuffer(element.value, dtype=">u2").astype("<u2").tobytes()
            palette[keyword] = DataElement(element.tag, element.VR, swapped)
    return palette
