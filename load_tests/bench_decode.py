"""Decode throughput per transfer syntax over the corpus: this decoder against pydicom.

For every pixel file of the corpus that both decode, in one run and interleaved (medians over
--repeat runs of each file):
  ours     - services.decoder.core.decode_instance, in this process;
  pydicom  - pydicom.dcmread(...).pixel_array with pydicom's default plugin order, and
             apply_color_lut for PALETTE COLOR (the decoder returns RGB for those);
  pool     - (with --pool) decode_instance through a one-worker DecoderPool: ours plus the
             pickling of the request and of the pixels across the process boundary.
Throughput is decoded bytes and frames per second of summed medians; the ratio is ours over
pydicom, so machines can be compared. Which files decode is probed first through a pool, so a
codec that crashes on a file drops that file instead of ending the run.

    .venv/bin/python load_tests/bench_decode.py [--repeat 3] [--pool] [--max-mb 200] [--syntax UID]
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut
from pydicom.uid import UID

from services.common.errors import PlatformError
from services.common.settings import DecodeLimits
from services.decoder.core import decode_instance
from services.decoder.pool import DecoderPool

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"


@dataclass
class Syntax:
    files: int = 0
    frames: int = 0
    decoded_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    only_ours: int = 0
    only_pydicom: int = 0
    neither: int = 0


def pydicom_pixels(data: bytes) -> np.ndarray:
    """What a user who wants what the decoder returns would write: pixel_array (YBR comes back
    as RGB by default), and a PALETTE COLOR image through its palette."""
    ds = pydicom.dcmread(BytesIO(data), force=True)
    pixels = ds.pixel_array
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    return np.asarray(pixels)


def decodes(pool: DecoderPool, fn: Callable[..., object], *args: object) -> bool:
    try:
        pool.run(fn, *args)
    except PlatformError:
        return False
    return True


def median_seconds(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pool", action="store_true", help="also time through the pool")
    parser.add_argument("--max-mb", type=float, default=200.0, help="skip larger files")
    parser.add_argument("--syntax", action="append", help="only this transfer syntax UID")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # pydicom logs every plugin that fails on a file

    with (CORPUS / "MANIFEST.csv").open(newline="") as file:
        rows = [r for r in csv.DictReader(file) if r["has_pixels"] == "1"]
    limits = DecodeLimits()
    syntaxes: dict[str, Syntax] = defaultdict(Syntax)
    with (
        DecoderPool(workers=1, timeout_seconds=300) as probe,
        DecoderPool(workers=1, timeout_seconds=300) as pool,
    ):
        for row in rows:
            if int(row["size"]) > args.max_mb * 2**20:
                continue
            if args.syntax and row["transfer_syntax"] not in args.syntax:
                continue
            data = (CORPUS / row["path"]).read_bytes()
            stats = syntaxes[row["transfer_syntax"] or "(none)"]
            ours_ok = decodes(probe, decode_instance, data, limits)
            theirs_ok = decodes(probe, pydicom_pixels, data)
            if not (ours_ok and theirs_ok):
                stats.only_ours += ours_ok and not theirs_ok
                stats.only_pydicom += theirs_ok and not ours_ok
                stats.neither += not (ours_ok or theirs_ok)
                continue
            image = decode_instance(data, limits)
            stats.files += 1
            stats.frames += image.pixels.shape[0]
            stats.decoded_bytes += image.pixels.nbytes
            stats.seconds["ours"] += median_seconds(
                partial(decode_instance, data, limits), args.repeat
            )
            stats.seconds["pydicom"] += median_seconds(partial(pydicom_pixels, data), args.repeat)
            if args.pool:
                stats.seconds["pool"] += median_seconds(
                    partial(pool.decode, data, limits), args.repeat
                )
    report(syntaxes, args.pool)


def report(syntaxes: dict[str, Syntax], with_pool: bool) -> None:
    head = f"{'transfer syntax':<44} {'files':>5} {'frames':>6} {'MB':>7}"
    head += f" {'ours MB/s':>9} {'pydicom MB/s':>12} {'ratio':>6} {'ours fr/s':>9} {'pyd fr/s':>9}"
    if with_pool:
        head += f" {'pool MB/s':>9} {'pool/ours':>9}"
    print(head + "   not both (ours only/pydicom only/neither)")
    total = Syntax()
    for uid, stats in sorted(syntaxes.items(), key=lambda item: -item[1].decoded_bytes):
        print(line(label(uid), stats, with_pool))
        total.files += stats.files
        total.frames += stats.frames
        total.decoded_bytes += stats.decoded_bytes
        for name, seconds in stats.seconds.items():
            total.seconds[name] += seconds
        total.only_ours += stats.only_ours
        total.only_pydicom += stats.only_pydicom
        total.neither += stats.neither
    print(line("all", total, with_pool))


def line(name: str, stats: Syntax, with_pool: bool) -> str:
    mb = stats.decoded_bytes / 1e6
    text = f"{name:<44} {stats.files:>5} {stats.frames:>6} {mb:>7.1f}"
    if stats.files:
        ours, theirs = stats.seconds["ours"], stats.seconds["pydicom"]
        text += f" {mb / ours:>9.1f} {mb / theirs:>12.1f} {theirs / ours:>6.2f}"
        text += f" {stats.frames / ours:>9.1f} {stats.frames / theirs:>9.1f}"
        if with_pool:
            text += f" {mb / stats.seconds['pool']:>9.1f} {ours / stats.seconds['pool']:>9.2f}"
    else:
        text += " " * (60 if with_pool else 40)
    return text + f"   {stats.only_ours}/{stats.only_pydicom}/{stats.neither}"


def label(uid: str) -> str:
    """``4.201 High-Throughput JPEG 2000 ...``: the UID after 1.2.840.10008.1.2., then the name."""
    name = UID(uid).name if uid != "(none)" else ""
    short = uid.removeprefix("1.2.840.10008.1.2").lstrip(".") or "(implicit LE)"
    return f"{short} {name if name != uid else ''}".strip()[:44]


if __name__ == "__main__":
    main()
