"""A real Orthanc (Debian `orthanc` + `orthanc-dicomweb`) on loopback for the tests: started
with its own storage folder, DICOMweb enabled, reachable from this machine only."""

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

from waiting import wait_until

from services.cli.stack import free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    def __init__(self, url: str) -> None:
        self.url = url

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


@contextmanager
def running_orthanc(folder: Path) -> Iterator[Orthanc]:
    binary = shutil.which("Orthanc")
    if binary is None or not PLUGIN.exists():
        raise RuntimeError("Orthanc tests need the Debian packages orthanc and orthanc-dicomweb")
    http = free_port()
    config = {
        "Name": "imaging-platform-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    orthanc = Orthanc(f"http://127.0.0.1:{http}")
    try:

        def answers() -> bool:
            try:
                orthanc.get("/system")
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"Orthanc exited; see {folder / 'orthanc.log'}") from None
                return False
            return True

        wait_until(answers, 60, f"Orthanc did not start; see {folder / 'orthanc.log'}")
        yield orthanc
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
