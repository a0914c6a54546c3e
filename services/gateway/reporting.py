"""The gateway's result documents: the study's own instances (as received) are the evidence
the DICOM objects reference and copy their patient and study modules from, so a PACS files
them beside the images. Built off the event loop (services/gateway/core.py runs it in a
thread); the builders live in services/gateway/reports."""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset

from services.common.errors import InvalidInput
from services.common.results import EncodedObject, OutputOptions, Refusal, StudyResult
from services.common.version import DISTRIBUTION, platform_version
from services.gateway import reports


def _sources(instances: Sequence[bytes], pixels: bool = False) -> list[Dataset]:
    """Each instance's data set; its pixels only when a document draws on them (heatmaps)."""
    sources: list[Dataset] = []
    for index, data in enumerate(instances):
        try:
            sources.append(pydicom.dcmread(BytesIO(bytes(data)), stop_before_pixels=not pixels))
        except Exception as err:  # the decoder accepted it; a second reading should too
            raise InvalidInput(f"instance {index}: cannot be read for the report") from err
    return sources


def _predecessors(documents: Sequence[bytes], sources: Sequence[Dataset]) -> list[Dataset]:
    """The predecessor documents' data sets (their headers: the SR names them by their UIDs),
    each of the study the documents are filed in (the first source's)."""
    study = str(sources[0].get("StudyInstanceUID") or "") if sources else ""
    found: list[Dataset] = []
    for index, data in enumerate(documents):
        try:
            ds = pydicom.dcmread(BytesIO(bytes(data)), stop_before_pixels=True)
        except Exception:  # the gateway read it on admission; the message may quote values
            raise InvalidInput(
                f"predecessor document {index}: cannot be read for the report"
            ) from None
        if str(ds.get("StudyInstanceUID") or "") != study:
            raise InvalidInput(
                f"predecessor document {index} is of another study than the one analysed"
            )
        found.append(ds)
    return found


class DocumentReporter:
    def __init__(self, manufacturer: str = DISTRIBUTION, version: str = "") -> None:
        # The installed package's own version: what the documents name as software version.
        self._manufacturer = manufacturer
        self._version = version or platform_version()

    def outputs(
        self,
        instances: Sequence[bytes],
        result: StudyResult,
        options: OutputOptions,
        *,
        uid_seed: str = "",
        predecessors: Sequence[bytes] = (),
    ) -> list[EncodedObject]:
        sources = _sources(instances, pixels=options.dicom_heatmap)
        return reports.build_outputs(
            sources,
            result,
            options,
            manufacturer=self._manufacturer,
            software_version=self._version,
            uid_seed=uid_seed,
            predecessors=_predecessors(predecessors, sources),
        )

    def refusal(
        self,
        instances: Sequence[bytes],
        pipeline: str,
        refusal: Refusal,
        options: OutputOptions,
        *,
        uid_seed: str = "",
        predecessors: Sequence[bytes] = (),
    ) -> list[EncodedObject]:
        sources = _sources(instances)
        return reports.refusal_outputs(
            sources,
            pipeline,
            refusal.reason,
            options,
            kind=refusal.kind,
            manufacturer=self._manufacturer,
            software_version=self._version,
            uid_seed=uid_seed,
            predecessors=_predecessors(predecessors, sources),
        )
