"""Quick-look PNGs for a person: the result drawn over the image itself.

The heatmap a response carries is a transparent overlay (the postprocessor never re-windows the
image on a viewer's behalf); alone it cannot be judged. Here the CLI, which has the DICOM
files, decodes the image with pydicom (Modality LUT, then the file's VOI LUT or window, else a
1st-99th percentile window), draws it grey, the heat over it in colour with an alpha that
grows with the heat, and a colour bar with its scale; for a volume result, the mask over the
series' middle slice. A text band on top says what the picture shows, the status and that it
is not a diagnosis. Only numpy and Pillow draw; nothing here reads or writes patient identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from services.api.imaging.v1 import findings_pb2, gateway_pb2, tensor_pb2
from services.cli.client import quiet_pydicom
from services.common import tensors
from services.common.textband import NOT_A_DIAGNOSIS, font, text_band

# The image part is drawn at its own size within these bounds (long side, px): a 28 px image is
# scaled up so the text and colour bar stay legible, a 3000 px one down to stay a quick look.
MIN_SIDE = 384
MAX_SIDE = 1024
# The colour bar's panel right of the image: the bar, then its scale.
PANEL_WIDTH = 72
BAR_LEFT = 8
BAR_WIDTH = 16
BAR_MARGIN = 12
_PANEL_PAPER = (24, 24, 24)
# Heat: a blue -> cyan -> yellow -> red ramp (anchor, R, G, B), the postprocessor's own, and the
# largest opacity it is drawn with (at the map's peak).
RAMP = np.array(
    [[0.0, 0, 0, 255], [0.35, 0, 255, 255], [0.65, 255, 255, 0], [1.0, 255, 0, 0]],
    dtype=np.float32,
)
HEAT_OPACITY = 0.6
MASK_FILL = np.array([255, 48, 48], np.float32)
MASK_OPACITY = 0.35
MASK_EDGE = (255, 220, 0)


# --- words -----------------------------------------------------------------------------------


def status_name(finding: findings_pb2.Finding) -> str:
    """POSITIVE, NEGATIVE or INDETERMINATE (older gateways: from ``positive``)."""
    name = findings_pb2.FindingStatus.Name(finding.status).removeprefix("FINDING_STATUS_")
    return name if name != "UNSPECIFIED" else ("POSITIVE" if finding.positive else "NEGATIVE")


def caveat_text(caveat: findings_pb2.Caveat) -> str:
    """The caveat's reason in words, then its detail (which may name the reason itself)."""
    reason = findings_pb2.CaveatReason.Name(caveat.reason).removeprefix("CAVEAT_REASON_")
    words = reason.lower().replace("_", " ")
    if caveat.detail.lower().replace("-", " ").startswith(words):
        return caveat.detail
    return f"{words}: {caveat.detail}"


def status_reason(finding: findings_pb2.Finding) -> str:
    """Why the finding has its status: the caveats of an INDETERMINATE one, else the
    probability against the operating threshold."""
    status = status_name(finding)
    if status == "INDETERMINATE":
        return "; ".join(caveat_text(c) for c in finding.caveats) or "no decision"
    relation = ">=" if status == "POSITIVE" else "<"
    return f"p {finding.probability:.3f} {relation} threshold {finding.threshold:.3f}"


# --- the image -------------------------------------------------------------------------------


def display_gray(ds: Dataset, frame: int = 0) -> np.ndarray:
    """Frame ``frame`` of ``ds`` as uint8 grey for display: Modality LUT, then the file's VOI
    LUT or window (or, without one, its 1st-99th percentiles), MONOCHROME1 inverted; colour
    images by their luminance."""
    with quiet_pydicom():
        pixels = np.asarray(ds.pixel_array)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        if frames > 1:
            pixels = pixels[min(max(frame, 0), frames - 1)]
        if samples > 1:  # pydicom hands colour over as RGB
            rgb = pixels[..., :3].astype(np.float32)
            values = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
            windowed = False
        else:
            values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
            windowed = "VOILUTSequence" in ds or "WindowCenter" in ds
            if windowed:
                values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"not a 2-D image (shape {values.shape})")
    if windowed:
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    gray = np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255.0
    if samples == 1 and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        gray = 255.0 - gray
    display: np.ndarray = np.rint(gray).astype(np.uint8)
    return display


def display_size(rows: int, cols: int) -> tuple[int, int]:
    """(rows, cols) scaled, aspect kept, to a long side between MIN_SIDE and MAX_SIDE."""
    long_side = max(rows, cols, 1)
    scale = min(max(long_side, MIN_SIDE), MAX_SIDE) / long_side
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def _resized(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    how = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    resized: np.ndarray = np.asarray(Image.fromarray(array).resize((size[1], size[0]), how))
    return resized


def ramp(values: np.ndarray) -> np.ndarray:
    """RGB float colours of ``values`` in [0, 1] on the heat ramp."""
    return np.stack([np.interp(values, RAMP[:, 0], RAMP[:, c + 1]) for c in range(3)], axis=-1)


def _colour_bar(height: int) -> np.ndarray:
    """The panel: the ramp from 0 (bottom) to the map's peak (top), and its scale."""
    panel = Image.new("RGB", (PANEL_WIDTH, height), _PANEL_PAPER)
    top, bottom = BAR_MARGIN, max(BAR_MARGIN + 2, height - BAR_MARGIN)
    levels = np.linspace(1.0, 0.0, bottom - top)[:, None]
    bar = np.repeat(ramp(levels), BAR_WIDTH, axis=1)
    panel.paste(Image.fromarray(np.rint(bar).astype(np.uint8)), (BAR_LEFT, top))
    draw = ImageDraw.Draw(panel)
    face = font(11)
    x = BAR_LEFT + BAR_WIDTH + 4
    for value, label in ((1.0, "1 peak"), (0.5, "0.5"), (0.0, "0")):
        y = top + (1.0 - value) * (bottom - top - 1)
        draw.line([(BAR_LEFT + BAR_WIDTH, y), (x - 1, y)], fill=(255, 255, 255))
        draw.text((x, y - 6), label, (255, 255, 255), font=face)
    return np.asarray(panel)


def _with_band(picture: np.ndarray, texts: Sequence[str]) -> Image.Image:
    band = text_band(picture.shape[1], texts, font_px=max(11, picture.shape[1] // 80))
    return Image.fromarray(np.concatenate([band, picture], axis=0))


def heatmap_quicklook(
    gray: np.ndarray | None, overlay_png: bytes, texts: Sequence[str]
) -> Image.Image:
    """Opaque RGB: a text band, below it the image (grey) with the heat over it, and right of
    the image the colour bar. ``gray`` None: over black, at the overlay's own aspect."""
    with Image.open(BytesIO(overlay_png)) as opened:
        overlay = np.asarray(opened.convert("RGBA"))
    rows, cols = gray.shape if gray is not None else overlay.shape[:2]
    size = display_size(rows, cols)
    base = (
        _resized(gray, size).astype(np.float32) if gray is not None else np.zeros(size, np.float32)
    )
    # The overlay's alpha grows with the map (scaled to its own peak): the map, recovered.
    alpha = _resized(overlay, size)[..., 3].astype(np.float32)
    heat = alpha / alpha.max() if alpha.max() > 0 else alpha
    opacity = (heat * HEAT_OPACITY)[..., None]
    rgb = base[..., None] * (1.0 - opacity) + ramp(heat) * opacity
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    picture = np.concatenate([image, _colour_bar(size[0])], axis=1)
    return _with_band(picture, texts)


def mask_quicklook(gray: np.ndarray | None, mask: np.ndarray, texts: Sequence[str]) -> Image.Image:
    """Opaque RGB: a text band, below it the slice (grey) with the mask filled in red and its
    edge in yellow. ``gray`` None: over black."""
    rows, cols = mask.shape
    size = display_size(rows, cols)
    inside = _resized((mask > 0).astype(np.uint8) * 255, size, nearest=True) > 0
    base = _resized(gray, size) if gray is not None else np.zeros(size, np.uint8)
    rgb = np.repeat(base[..., None].astype(np.float32), 3, axis=-1)
    rgb[inside] = rgb[inside] * (1.0 - MASK_OPACITY) + MASK_FILL * MASK_OPACITY
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    core = inside.copy()  # the mask less its one-pixel border: what is left is the edge
    core[1:, :] &= inside[:-1, :]
    core[:-1, :] &= inside[1:, :]
    core[:, 1:] &= inside[:, :-1]
    core[:, :-1] &= inside[:, 1:]
    image[inside & ~core] = MASK_EDGE
    return _with_band(image, texts)


# --- from a response and its files -----------------------------------------------------------


@dataclass
class _Source:
    data: Path | bytes
    header: Dataset

    def read(self) -> Dataset:
        with quiet_pydicom():
            if isinstance(self.data, Path):
                return dcmread(self.data)
            return dcmread(BytesIO(self.data))


def _index(sources: Sequence[Path | bytes]) -> list[_Source]:
    found = []
    for data in sources:
        try:
            with quiet_pydicom():
                opened = data if isinstance(data, Path) else BytesIO(data)
                header = dcmread(opened, stop_before_pixels=True)
        except Exception:  # not every instance sent need be readable here
            continue
        found.append(_Source(data, header))
    return found


def _gray(source: _Source | None, frame: int = 0) -> np.ndarray | None:
    """The source's pixels for display, or None (then the quick look is drawn over black)."""
    if source is None:
        return None
    try:
        return display_gray(source.read(), frame)
    except Exception:  # a codec pydicom lacks, a broken file: draw over black
        return None


def _middle_slice(
    seg: tensor_pb2.Segmentation, sources: list[_Source]
) -> tuple[int, _Source | None, int]:
    """The mask's middle slice, the instance (and frame) holding it on the series' grid."""
    geometry = seg.geometry
    slices = int(geometry.shape[0])
    k = slices // 2
    series = [
        s for s in sources if s.header.get("SeriesInstanceUID") == geometry.series_instance_uid
    ]
    if len(geometry.affine) == 16:
        affine = np.array(geometry.affine, np.float64).reshape(4, 4)
        where = (affine @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
        tolerance = max(float(geometry.spacing[0]) / 2 if geometry.spacing else 0.5, 1e-3)
        best: tuple[float, _Source] | None = None
        for source in series:
            position = source.header.get("ImagePositionPatient")
            if position is None or len(position) != 3:
                continue
            distance = float(np.linalg.norm(np.array(position, np.float64) - where))
            if best is None or distance < best[0]:
                best = (distance, source)
        if best is not None and best[0] <= tolerance:
            return k, best[1], 0
    # One multi-frame instance holding the whole series: its frames in slice order.
    if len(series) == 1 and int(series[0].header.get("NumberOfFrames") or 1) == slices:
        return k, series[0], k
    return k, None, 0


def write_quicklooks(
    out: Path, stem: str, response: gateway_pb2.AnalyzeResponse, sources: Sequence[Path | bytes]
) -> dict[int | str, Path]:
    """A quick-look PNG per heatmap and per mask of ``response`` into ``out``, by finding
    index and mask label; ``sources``: the study's instances as sent (files or bytes), whose
    pixels are drawn under them."""
    if not any(f.heatmap_png for f in response.findings) and not response.segmentations:
        return {}
    indexed = _index(sources)
    by_uid = {str(s.header.get("SOPInstanceUID", "")): s for s in indexed}
    written: dict[int | str, Path] = {}
    priority = findings_pb2.TriagePriority.Name(response.triage_priority)
    for index, finding in enumerate(response.findings):
        if not finding.heatmap_png:
            continue
        source = by_uid.get(finding.sop_instance_uid)
        gray = _gray(source)
        texts = [
            f"{finding.display_name}: {status_name(finding)} ({status_reason(finding)}); "
            f"triage {priority.removeprefix('TRIAGE_PRIORITY_')}",
            "Colour: where the model looked, relative to its own peak (bar), not a probability"
            + ("" if gray is not None else "; the image could not be decoded: drawn over black"),
            f"{response.pipeline} ({response.model.name} v{response.model.version}): "
            f"{NOT_A_DIAGNOSIS}",
        ]
        target = out / f"{stem}.{index}.{finding.code}.quicklook.png"
        heatmap_quicklook(gray, finding.heatmap_png, texts).save(target)
        written[index] = target
    for seg in response.segmentations:
        mask = tensors.from_proto(seg.mask)
        if mask.ndim != 3 or mask.shape[0] == 0:
            continue
        k, source, frame = _middle_slice(seg, indexed)
        gray = _gray(source, frame)
        if gray is not None and gray.shape != mask.shape[1:]:
            gray = None  # not on the mask's grid after all
        measured = [
            f"{m.display_name} {m.value:.1f} {m.unit}"
            for m in response.measurements
            if not m.series_instance_uid
            or m.series_instance_uid == seg.geometry.series_instance_uid
        ]
        texts = [
            f"{seg.label} mask (red, edge yellow) on slice {k + 1} of {mask.shape[0]}"
            + ("" if gray is not None else "; slice not decoded: drawn over black"),
            *measured,
            *(caveat_text(c) for c in response.caveats),
            f"{response.pipeline} ({response.model.name} v{response.model.version}): "
            f"{NOT_A_DIAGNOSIS}",
        ]
        target = out / f"{stem}.seg-{seg.label}.quicklook.png"
        mask_quicklook(gray, mask[k], texts).save(target)
        written[seg.label] = target
    return written
