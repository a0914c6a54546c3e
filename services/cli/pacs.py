"""A tiny DICOM Storage SCP for `make demo`: where the demo's results are delivered, standing in
for the hospital PACS a real deployment names in its destinations file (README "Results out").

pynetdicom's Storage SCP, loopback only, storing every instance it receives under a folder as
``<StudyInstanceUID>/<SOPInstanceUID>.dcm``. It does not offer Storage Commitment, so the demo's
destination turns that off; a real PACS (Orthanc, dcm4chee) confirms deliveries with it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.common.dicom import DECODABLE_TRANSFER_SYNTAXES

DEMO_PACS_AE = "DEMO_PACS"


@dataclass
class DemoPacs:
    folder: Path
    port: int = 0
    received: list[Path] = field(default_factory=list)
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        ae = AE(ae_title=DEMO_PACS_AE)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(
                    context.abstract_syntax, [UID(ts) for ts in DECODABLE_TRANSFER_SYNTAXES]
                )
        self.folder.mkdir(parents=True, exist_ok=True)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self._server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        target = self.folder / str(dataset.StudyInstanceUID) / f"{dataset.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(target, enforce_file_format=True)
        with self._lock:
            self.received.append(target)
        return 0x0000

    def files(self) -> list[Path]:
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def destinations_yaml(self) -> str:
        """The destinations file routing SR and SEG here (see services/ingest/destinations.py)."""
        return (
            "destinations:\n"
            f"  pacs: {{type: dicom, ae_title: {DEMO_PACS_AE}, host: 127.0.0.1, "
            f"port: {self.port}, storage_commitment: false}}\n"
            "rules:\n"
            "  - {destinations: [pacs], documents: [sr, seg], refusals: true}\n"
        )
