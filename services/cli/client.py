"""A small client for the public Gateway API, used by the CLI, demo, tests and benchmarks."""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import tls
from services.common.results import DocumentKind
from services.common.tls_files import PLAINTEXT, TlsFiles

CHUNK_BYTES = 1024 * 1024
# Above this a study is streamed in chunks instead of sent as one message.
# --documents names (short, for a command line) -> the document kinds they ask for.
DOCUMENTS = {
    "sr": DocumentKind.DICOM_SR,
    "seg": DocumentKind.DICOM_SEG,
    "heatmap": DocumentKind.DICOM_HEATMAP,
    "fhir": DocumentKind.FHIR,
}
STREAM_ABOVE_BYTES = 16 * 1024 * 1024


def stream_messages(
    instances: Sequence[bytes], header: gateway_pb2.AnalyzeHeader, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[gateway_pb2.AnalyzeChunk]:
    yield gateway_pb2.AnalyzeChunk(header=header)
    for index, data in enumerate(instances):
        for start in range(0, max(len(data), 1), chunk_bytes):
            yield gateway_pb2.AnalyzeChunk(
                chunk=gateway_pb2.InstanceChunk(
                    instance_index=index, data=data[start : start + chunk_bytes]
                )
            )


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <key>`` to every call."""

    def __init__(self, key: str) -> None:
        self._header = ("authorization", f"Bearer {key}")

    def _with_key(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)


class GatewayClient:
    """``files``: mutual TLS (IMAGING_TLS_CA and the client pair); ``api_key``: sent as
    ``authorization: Bearer`` on every call."""

    def __init__(
        self,
        address: str,
        timeout: float = 120.0,
        files: TlsFiles = PLAINTEXT,
        api_key: str = "",
    ) -> None:
        # Responses carry heatmaps and masks: allow more than gRPC's 4 MB default.
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        credentials = tls.channel_credentials(files)
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        if api_key:
            bearer = _Bearer(api_key)
            self.channel = grpc.intercept_channel(self.channel, bearer)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self._timeout = timeout

    def analyze(
        self,
        instances: Sequence[bytes],
        pipeline: str = "",
        priority: gateway_pb2.RequestPriority = gateway_pb2.REQUEST_PRIORITY_UNSPECIFIED,
        client_request_id: str = "",
        heatmaps: bool = False,
        masks: bool = False,
        documents: Sequence[str] = (),
        report_refusal: bool = False,
    ) -> gateway_pb2.AnalyzeResponse:
        """One message for small studies, a client stream for large ones. ``documents``: any
        of "sr", "seg", "heatmap", "fhir" (DICOM SR, SEG, Secondary Capture, FHIR)."""
        unknown = set(documents) - set(DOCUMENTS)
        if unknown:
            raise ValueError(f"unknown documents {sorted(unknown)}; choose from {list(DOCUMENTS)}")
        options = gateway_pb2.OutputOptions(
            heatmaps=heatmaps,
            masks=masks,
            report_refusal=report_refusal,
            **{DOCUMENTS[name].value: True for name in documents},
        )
        if sum(len(i) for i in instances) <= STREAM_ABOVE_BYTES:
            request = gateway_pb2.AnalyzeRequest(
                instances=list(instances),
                pipeline=pipeline,
                priority=priority,
                client_request_id=client_request_id,
                options=options,
            )
            response: gateway_pb2.AnalyzeResponse = self.stub.Analyze(
                request, timeout=self._timeout
            )
            return response
        header = gateway_pb2.AnalyzeHeader(
            pipeline=pipeline,
            priority=priority,
            client_request_id=client_request_id,
            options=options,
        )
        streamed: gateway_pb2.AnalyzeResponse = self.stub.AnalyzeStream(
            stream_messages(instances, header), timeout=self._timeout
        )
        return streamed

    def pipelines(self) -> gateway_pb2.ListPipelinesResponse:
        listed: gateway_pb2.ListPipelinesResponse = self.stub.ListPipelines(
            gateway_pb2.ListPipelinesRequest(), timeout=self._timeout
        )
        return listed

    def close(self) -> None:
        self.channel.close()


# --- which files make one study --------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """What grouping reads from one file's header: UIDs and order, never identity."""

    path: Path
    study_uid: str
    series_uid: str
    instance_number: int


@dataclass
class Study:
    """The files sent in one Analyze request, in series order, then by Instance Number."""

    files: list[Path]
    series: int = 1

    @property
    def label(self) -> str:
        """The first file's name, and how many files and series the study has beyond it."""
        first = self.files[0].name
        if len(self.files) == 1:
            return first
        series = f", {self.series} series" if self.series > 1 else ""
        return f"{first} (+{len(self.files) - 1} files{series})"


@dataclass
class Scan:
    """The studies found under the given paths, and what was passed over."""

    studies: list[Study] = field(default_factory=list)
    not_dicom: int = 0
    no_pixels: int = 0

    def skipped(self) -> str:
        """One line on what was passed over, or "" when nothing was."""
        parts = [f"{self.not_dicom} not DICOM"] if self.not_dicom else []
        if self.no_pixels:
            parts.append(f"{self.no_pixels} DICOM without pixel data")
        total = self.not_dicom + self.no_pixels
        return f"skipped {total} file(s): {', '.join(parts)}" if parts else ""


# What pydicom raises on a file that is not DICOM, or is too broken to be one.
_NOT_DICOM = (
    InvalidDicomError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    NotImplementedError,
    struct.error,
)


class NotAnImage(Exception):
    """A file that is not DICOM, or a DICOM object without pixel data (``dicom`` True)."""

    def __init__(self, dicom: bool) -> None:
        super().__init__("DICOM without pixel data" if dicom else "not DICOM")
        self.dicom = dicom


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's read-time warnings quote header values (a patient's name among them): off
    while the CLI reads headers and pixels."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def read_instance(path: Path) -> Instance:
    """The grouping keys of ``path``, reading its header only (stop_before_pixels).

    Whether pixel data follows the header is seen from where reading stopped: pydicom leaves
    the file at the Pixel Data tag when there is one, at its end otherwise (a deflated data
    set is inflated in memory: there an image's Rows stand in for it)."""
    with quiet_pydicom():
        try:
            with path.open("rb") as file:
                ds = dcmread(file, stop_before_pixels=True)
                more = bool(file.read(1))
        except _NOT_DICOM as err:  # an unreadable file (OSError) is the user's to hear of
            raise NotAnImage(dicom=False) from err
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        has_pixels = ("Rows" in ds) if syntax == DeflatedExplicitVRLittleEndian else more
        if not has_pixels:
            raise NotAnImage(dicom=True)
        try:
            number = int(ds.get("InstanceNumber") or 0)
        except (TypeError, ValueError):
            number = 0
        return Instance(
            path,
            study_uid=str(ds.get("StudyInstanceUID") or ""),
            series_uid=str(ds.get("SeriesInstanceUID") or ""),
            instance_number=number,
        )


def _walk(folder: Path) -> list[Path]:
    """Every file under ``folder``, in a stable order; hidden files and folders left out."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / name for name in sorted(files) if not name.startswith("."))
    return found


def _study(instances: list[Instance]) -> Study:
    series: dict[str, list[Instance]] = {}
    for instance in instances:
        series.setdefault(instance.series_uid, []).append(instance)
    files = [
        i.path
        for members in series.values()
        for i in sorted(members, key=lambda i: (i.instance_number, str(i.path)))
    ]
    return Study(files, series=len(series))


def find_studies(paths: Sequence[Path], per_file: bool = False) -> Scan:
    """Studies of the DICOM images under ``paths``, grouped by Study Instance UID (series by
    Series Instance UID within each), in the order their first file was given or found.

    Files found in a folder are passed over, and counted, when they are not DICOM or hold no
    pixel data. Files named are always sent: the gateway says why one cannot be analysed (a
    named file without a Study Instance UID, or unreadable, is a study of its own).
    ``per_file``: every file a study of its own, as the CLI did before it grouped."""
    scan = Scan()
    keyed: dict[str, list[Instance]] = {}
    seen: set[Path] = set()
    for given in paths:
        named = not given.is_dir()
        for path in [given] if named else _walk(given):
            if path.resolve() in seen:  # a file named and also found in a folder named
                continue
            seen.add(path.resolve())
            try:
                instance = read_instance(path)
            except NotAnImage as err:
                if not named:
                    if err.dicom:
                        scan.no_pixels += 1
                    else:
                        scan.not_dicom += 1
                    continue
                instance = Instance(path, "", "", 0)
            key = instance.study_uid if instance.study_uid and not per_file else f"file:{path}"
            keyed.setdefault(key, []).append(instance)
    scan.studies = [_study(instances) for instances in keyed.values()]
    return scan
