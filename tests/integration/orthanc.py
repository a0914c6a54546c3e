"""A real Orthanc (Debian `orthanc` + `orthanc-dicomweb`) on loopback for the tests: started
with its own storage folder, DICOMweb enabled, reachable from this machine only.

Orthanc cannot bind port 0 and say which port it got, so its HTTP and DICOM ports are picked
and it is started again on new ones if one was taken meanwhile (tests/ports.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ports import for_attempt, pick_port, start_all

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    def __init__(self, url: str, dicom_port: int = 0, aet: str = "ORTHANC") -> None:
        self.url = url
        self.dicom_port = dicom_port  # its DICOM (DIMSE) port on 127.0.0.1
        self.aet = aet  # its AE title (DicomAet)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as reply:
            return json.loads(reply.read())

    def stow(self, instances: Sequence[bytes]) -> dict[str, Any]:
        """STOW-RS: every instance in one multipart/related request; the store's answer."""
        boundary = uuid.uuid4().hex
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                for data in instances
            )
            + f"--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{self.url}/dicom-web/studies",
            data=body,
            method="POST",
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
            return answer


class _OrthancLaunch:
    """Orthanc on picked ports, for ports.start_all."""

    name = "Orthanc"

    def __init__(
        self,
        binary: str,
        folder: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.aet = aet
        self.modalities = modalities or {}
        self.settings = settings or {}
        self.orthanc = Orthanc("")
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, attempt: int) -> list[tuple[subprocess.Popen[bytes], Path]]:
        http, dicom = pick_port(), pick_port()
        config: dict[str, Any] = {
            "Name": "imaging-platform-tests",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": http,
            "DicomPort": dicom,
            "DicomAet": self.aet,
            "DicomModalities": self.modalities,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            **self.settings,
        }
        path = for_attempt(self.folder / "orthanc.json", attempt)
        path.write_text(json.dumps(config))
        log = for_attempt(self.folder / "orthanc.log", attempt)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [self.binary, str(path)], stdout=out, stderr=subprocess.STDOUT
            )
        self.orthanc = Orthanc(f"http://127.0.0.1:{http}", dicom, self.aet)
        return [(self.process, log)]

    def ready(self) -> bool:
        try:
            self.orthanc.get("/system")
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def running_orthanc(
    folder: Path,
    aet: str = "ORTHANC",
    modalities: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> Iterator[Orthanc]:
    """``aet``: its DicomAet; ``modalities``: its DicomModalities (the peers it may call back,
    e.g. ``{"IMAGING": ["IMAGING", "127.0.0.1", port]}``, where it sends Storage Commitment
    reports); ``settings``: further configuration options, over the ones set here."""
    binary = shutil.which("Orthanc")
    if binary is None or not PLUGIN.exists():
        raise RuntimeError("Orthanc tests need the Debian packages orthanc and orthanc-dicomweb")
    launch = _OrthancLaunch(binary, folder, aet, modalities, settings)
    start_all([launch], 60)
    try:
        yield launch.orthanc
    finally:
        launch.stop()
