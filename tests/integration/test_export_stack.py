"""Results exported end to end on a real stack: studies sent to the ingest over DICOM, analysed
through the gateway, and their documents delivered to a real Orthanc (C-STORE with Storage
Commitment, and STOW-RS) and to the stand-in FHIR server (tests/integration/fhir_standin.py).

Orthanc knows the ingest's SCP (AE title IMAGING, a port picked before the stack starts) so that
its Storage Commitment reports come back to it. The destinations retry after 1 to 3 s, and the
ingest's job timeout (also the exporter's ack wait) is 4 s, so an export cut short by kill -9
is delivered again soon after the ingest comes back (``IMAGING_EXPORT_KILL_POINTS`` seeded
points, default 20): Orthanc still holds one SR of the study.

The stack's quiet period is long (600 s): only an explicit close completes a study. Export
records are polled by key (GetExport).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pydicom
import pytest
from fhir_standin import FhirStandIn, running_fhir_standin
from orthanc import PLUGIN, Orthanc, _OrthancLaunch
from ports import for_attempt, pick_port, start_all
from pydicom.uid import generate_uid
from waiting import pause, wait_until

from services.api.imaging.v1 import ingest_pb2
from services.cli.main import PNEUMONIAMNIST
from services.cli.samples import (
    BRAIN_LAYERS,
    BRAIN_SHAPE,
    BRAIN_SPACING,
    brain_series,
    inside,
    mr_head_series,
    pneumoniamnist_samples,
    to_bytes,
)
from services.cli.stack import Ports, Stack
from services.cli.studies import IngestClient, export_state, state_name
from services.common.tls_files import TlsFiles

pytestmark = pytest.mark.integration

SCP_AE = "IMAGING"  # the ingest's SCP, and its calling AE title towards Orthanc
ORTHANC_AE = "ORTHANC_STACK"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
FINAL = frozenset({"done", "refused", "failed", "dead_lettered"})
# Seconds: an analysis (a 64-slice volume on CPU), an export (Storage Commitment included,
# or a redelivery after the 10 s ack wait), the ingest or Orthanc coming back.
ANALYSIS_SECONDS = 120.0
EXPORT_SECONDS = 60.0
RESTART_SECONDS = 60.0
KILL_POINTS = int(os.environ.get("IMAGING_EXPORT_KILL_POINTS", "20"))
# Seconds after each moment within which the kill falls: the close (the analysis, then the
# exports), the result stored (the exports being queued), the C-STORE export's record.
KILL_WINDOWS = {"closed": 0.4, "stored": 0.1, "exporting": 0.2}
KILL_MOMENTS = tuple(KILL_WINDOWS)
RETRY = {"backoff_seconds": 1, "max_backoff_seconds": 3, "max_attempts": 100}


# --- Orthanc that can be stopped and started again ------------------------------------------


class _Relaunch(_OrthancLaunch):
    """Orthanc on picked ports (ports.start_all), started again by :meth:`restart` with the
    configuration of the start that succeeded: the same ports and the same storage."""

    attempt = 0

    def spawn(self, attempt: int) -> list[tuple[subprocess.Popen[bytes], Path]]:
        self.attempt = attempt
        return super().spawn(attempt)

    def restart(self) -> None:
        self.stop()
        config = for_attempt(self.folder / "orthanc.json", self.attempt)
        log = for_attempt(self.folder / "orthanc.log", self.attempt)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [self.binary, str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"Orthanc exited on restart; see {log}")
            return self.ready()

        wait_until(up, RESTART_SECONDS, "Orthanc answers again on its ports")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ports() -> Ports:
    """Every service on a port it binds, but the ingest's DICOM port picked now: Orthanc must
    be told it before the stack starts."""
    chosen = Ports.free()
    chosen.dimse = pick_port()
    return chosen


@pytest.fixture(scope="module")
def orthanc_launch(tmp_path_factory: pytest.TempPathFactory, ports: Ports) -> Iterator[_Relaunch]:
    binary = shutil.which("Orthanc")
    if binary is None or not PLUGIN.exists():
        pytest.fail("Orthanc tests need the Debian packages orthanc and orthanc-dicomweb")
    launch = _Relaunch(
        binary,
        tmp_path_factory.mktemp("orthanc"),
        aet=ORTHANC_AE,
        modalities={SCP_AE: [SCP_AE, "127.0.0.1", ports.dimse]},
        settings={"DicomScuTimeout": 5},
    )
    start_all([launch], 60)
    try:
        yield launch
    finally:
        launch.stop()


@pytest.fixture(scope="module")
def orthanc(orthanc_launch: _Relaunch) -> Orthanc:
    return orthanc_launch.orthanc


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirStandIn]:
    with running_fhir_standin() as server:
        yield server


@pytest.fixture(scope="module")
def export_stack(
    tmp_path_factory: pytest.TempPathFactory, ports: Ports, orthanc: Orthanc, fhir: FhirStandIn
) -> Iterator[Stack]:
    if not PNEUMONIAMNIST.is_file():
        pytest.fail(f"{PNEUMONIAMNIST} not found; shared data must sit beside the repo")
    destinations = {
        "destinations": {
            "pacs": {
                "type": "dicom",
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "calling_ae_title": SCP_AE,
                "storage_commitment": True,
                "commitment_timeout_seconds": 20,
                "timeout_seconds": 5,
                "retry": RETRY,
            },
            "web": {"type": "dicomweb", "url": f"{orthanc.url}/dicom-web", "retry": RETRY},
            "ehr": {"type": "fhir", "url": fhir.url, "retry": RETRY},
        },
        "rules": [
            {"destinations": ["pacs", "web"], "documents": ["sr", "seg"], "refusals": True},
            {"destinations": ["ehr"], "documents": ["fhir"]},
        ],
    }
    config = tmp_path_factory.mktemp("destinations") / "destinations.yaml"
    config.write_text(json.dumps(destinations))  # JSON is YAML
    running = Stack(
        run_dir=tmp_path_factory.mktemp("export-stack"),
        ports=ports,
        ingest=True,
        extra_env={
            "IMAGING_QUIET_SECONDS": "600",
            "IMAGING_DESTINATIONS_FILE": str(config),
            "IMAGING_JOB_TIMEOUT_SECONDS": "4",
        },
    )
    running.start()
    assert running.ports.dimse == ports.dimse, "the ingest's DICOM port is the one Orthanc knows"
    yield running
    running.stop()


@pytest.fixture(scope="module")
def ingest(export_stack: Stack) -> Iterator[IngestClient]:
    client = IngestClient(export_stack.ingest_address, TlsFiles())
    yield client
    client.close()


# --- sending and reading back ----------------------------------------------------------------


def chest(index: int = 0) -> bytes:
    """A PneumoniaMNIST child's DX chest (``index`` 0: normal, 1: pneumonia), a new study."""
    ds = pydicom.dcmread(BytesIO(pneumoniamnist_samples(PNEUMONIAMNIST)[index][1]))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return to_bytes(ds)


def study_uid_of(data: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def storescu(stack: Stack, folder: Path, instances: Sequence[bytes]) -> str:
    """Every instance in one dcmtk storescu association; their study's UID."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, data in enumerate(instances):
        path = folder / f"{number:03d}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    peer = ["-aet", "STORESCU", "-aec", SCP_AE, "127.0.0.1", str(stack.ports.dimse)]
    sent = subprocess.run(
        ["storescu", "-R", *peer, *paths],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    return study_uid_of(instances[0])


def _answering(call: Any) -> Any:
    """``call()``, or None while the ingest is away (restarting) or has no such record."""
    try:
        return call()
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
            return None
        raise


def finished(client: IngestClient, study_uid: str) -> ingest_pb2.Study:
    def final() -> ingest_pb2.Study | None:
        study = _answering(lambda: client.show(study_uid))
        return study if study is not None and state_name(study) in FINAL else None

    study: ingest_pb2.Study = wait_until(
        final, ANALYSIS_SECONDS, f"study {study_uid} reaches a final state"
    )
    return study


def closed(client: IngestClient, study_uid: str) -> ingest_pb2.Study:
    client.close_study(study_uid)
    return finished(client, study_uid)


def export_of(client: IngestClient, destination: str, result_key: str) -> ingest_pb2.Export | None:
    """One export record, read by its key (None while it does not exist or the ingest is
    away). Never ListExports in a poll: each call leaves a KV watcher consumer on the NATS
    server for minutes (see the module's docstring)."""
    export: ingest_pb2.Export | None = _answering(
        lambda: client.export(f"{destination}.{result_key}")
    )
    return export


def delivered(
    client: IngestClient, result_key: str, destinations: Sequence[str]
) -> dict[str, ingest_pb2.Export]:
    """The result's exports once each of ``destinations`` is delivered (failing early, with
    the reason, when one is dead-lettered)."""

    def done() -> dict[str, ingest_pb2.Export] | None:
        found = {}
        for name in destinations:
            export = export_of(client, name, result_key)
            if export is None:
                return None
            if export_state(export) == "dead_lettered":
                raise AssertionError(f"export to {name} dead-lettered: {export.failure}")
            if export_state(export) != "delivered":
                return None
            found[name] = export
        return found

    found: dict[str, ingest_pb2.Export] = wait_until(
        done, EXPORT_SECONDS, f"exports of {result_key} to {', '.join(destinations)} delivered"
    )
    return found


def stored_result(stack: Stack, study_uid: str) -> str:
    """The key of the study's stored result, once the worker stored it (its manifest names
    the study; a partial result is a hidden folder)."""
    for manifest in (stack.spool_dir / "results").glob("*/manifest.json"):
        if manifest.parent.name.startswith("."):
            continue
        try:
            if json.loads(manifest.read_text())["study_uid"] == study_uid:
                return manifest.parent.name
        except (OSError, ValueError):  # being written
            continue
    return ""


def _post(orthanc: Orthanc, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{orthanc.url}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def held(orthanc: Orthanc, study_uid: str) -> list[tuple[str, str]]:
    """(Orthanc instance id, SOP Class UID) of every instance Orthanc holds of the study."""
    ids = _post(
        orthanc, "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}
    )
    return sorted(
        (i, str(orthanc.get(f"/instances/{i}/simplified-tags")["SOPClassUID"])) for i in ids
    )


def srs(orthanc: Orthanc, study_uid: str) -> list[str]:
    """Orthanc's ids of the study's SR instances."""
    return [i for i, sop_class in held(orthanc, study_uid) if sop_class.startswith(SR_PREFIX)]


def dsrdump(orthanc: Orthanc, instance: str, folder: Path) -> str:
    """dcmtk's rendering of an SR as Orthanc stores it."""
    with urllib.request.urlopen(f"{orthanc.url}/instances/{instance}/file", timeout=30) as reply:
        data = reply.read()
    path = folder / f"{instance}.dcm"
    path.write_bytes(data)
    dumped = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert dumped.returncode == 0, dumped.stdout + dumped.stderr
    return dumped.stdout


def reports_of(fhir: FhirStandIn, sr_uid: str) -> list[dict[str, Any]]:
    """DiagnosticReports the FHIR server holds that name the SR (its SOP Instance UID)."""
    return [
        r
        for r in fhir.resources("DiagnosticReport")
        if any(
            i.get("system") == "urn:dicom:uid" and str(i.get("value", "")).endswith(sr_uid)
            for i in r.get("identifier", [])
        )
    ]


def sr_uid_in(orthanc: Orthanc, instance: str) -> str:
    return str(orthanc.get(f"/instances/{instance}/simplified-tags")["SOPInstanceUID"])


# --- tests -------------------------------------------------------------------------------------


def test_chest_result_reaches_orthanc_twice_over_and_the_ehr(
    export_stack: Stack,
    ingest: IngestClient,
    orthanc: Orthanc,
    fhir: FhirStandIn,
    tmp_path: Path,
) -> None:
    study_uid = storescu(export_stack, tmp_path / "chest", [chest(1)])
    study = closed(ingest, study_uid)
    assert (state_name(study), study.pipeline) == ("done", "cxr_pneumonia"), study.error

    exports = delivered(ingest, study.result_key, ["pacs", "web", "ehr"])
    assert "committed" in exports["pacs"].receipt, exports["pacs"].receipt
    assert list(exports["pacs"].kinds) == list(exports["web"].kinds) == ["dicom_sr"]
    assert list(exports["ehr"].kinds) == ["fhir"]

    # C-STORE and STOW-RS sent the same SR (one SOP Instance UID): Orthanc holds it once.
    [sr] = srs(orthanc, study_uid)
    rendered = dsrdump(orthanc, sr, tmp_path)
    assert "Pneumonia" in rendered, rendered
    assert len(reports_of(fhir, sr_uid_in(orthanc, sr))) == 1


def test_brain_volume_sends_its_sr_and_segmentation(
    export_stack: Stack, ingest: IngestClient, orthanc: Orthanc, tmp_path: Path
) -> None:
    study_uid = storescu(export_stack, tmp_path / "brain", brain_series())
    study = closed(ingest, study_uid)
    assert (state_name(study), study.pipeline) == ("done", "mri_brain_extraction"), study.error

    exports = delivered(ingest, study.result_key, ["pacs", "web", "ehr"])
    assert sorted(exports["pacs"].kinds) == ["dicom_seg", "dicom_sr"]
    assert exports["pacs"].receipt.startswith("2 instances stored"), exports["pacs"].receipt
    assert sorted(c for _, c in held(orthanc, study_uid)) == sorted(
        [COMPREHENSIVE_3D_SR, SEGMENTATION]
    )


def _slab(slices: int = 10) -> list[bytes]:
    """The brain phantom's middle ``slices`` slices (2 mm apart): a slab, not a head."""
    volume = np.zeros(BRAIN_SHAPE, np.float32)
    for fractions, intensity in BRAIN_LAYERS:
        volume[inside(fractions)] = intensity
    start = (BRAIN_SHAPE[0] - slices) // 2
    slab = np.rint(volume[start : start + slices] * 1000).astype(np.uint16)
    return mr_head_series(slab, BRAIN_SPACING)


def test_a_refused_studys_refusal_sr_is_exported_where_the_rule_says(
    export_stack: Stack, ingest: IngestClient, orthanc: Orthanc, tmp_path: Path
) -> None:
    """A 10-slice MR head slab is routed to the brain pipeline, whose coverage it does not
    span: the gateway refuses it (report_refusal) with an SR saying why. The DICOM rule has
    ``refusals: true``, the FHIR rule not: the SR goes to Orthanc, nothing to the EHR."""
    study_uid = storescu(export_stack, tmp_path / "slab", _slab())
    study = closed(ingest, study_uid)
    assert (state_name(study), study.pipeline) == ("refused", "mri_brain_extraction"), study.error
    assert study.result_key, "a refusal with documents is a stored result"

    exports = delivered(ingest, study.result_key, ["pacs", "web"])
    assert export_of(ingest, "ehr", study.result_key) is None, "the FHIR rule takes no refusals"
    assert list(exports["pacs"].kinds) == ["dicom_sr"]
    [sr] = srs(orthanc, study_uid)
    rendered = dsrdump(orthanc, sr, tmp_path)
    assert '"Reason the study was not analyzed"' in rendered, rendered
    assert '"Outside intended use"' in rendered, rendered
    assert '"No algorithms succeeded; without findings"' in rendered, rendered


def test_orthanc_down_holds_its_exports_but_not_the_ehrs(
    export_stack: Stack,
    ingest: IngestClient,
    orthanc: Orthanc,
    orthanc_launch: _Relaunch,
    tmp_path: Path,
) -> None:
    orthanc_launch.stop()
    try:
        study_uid = storescu(export_stack, tmp_path / "chest", [chest(0)])
        study = closed(ingest, study_uid)
        assert state_name(study) == "done", study.error
        delivered(ingest, study.result_key, ["ehr"])

        def pacs_retrying() -> ingest_pb2.Export | None:
            pacs = export_of(ingest, "pacs", study.result_key)
            if pacs is not None and export_state(pacs) == "retrying":
                return pacs
            return None

        pacs = wait_until(pacs_retrying, EXPORT_SECONDS, "the C-STORE export is retrying")
        assert pacs.status == "connection", (pacs.status, pacs.failure)
        assert pacs.attempts >= 1
    finally:
        orthanc_launch.restart()

    exports = delivered(ingest, study.result_key, ["pacs", "web", "ehr"])
    assert exports["pacs"].attempts >= 2
    assert "committed" in exports["pacs"].receipt
    assert len(srs(orthanc, study_uid)) == 1


def kill_plan(point: int) -> tuple[str, float]:
    """When the ingest dies at ``point``: a seeded delay after a seeded moment. On this stack a
    chest study is analysed within about 0.1 s of its close, and its three exports are
    delivered within 0.4 s of the result being stored (the C-STORE and its Storage Commitment
    about 0.2 s): the delays fall inside those windows, measured on CPU."""
    moment = KILL_MOMENTS[point % len(KILL_MOMENTS)]  # each moment among the first points
    return moment, round(random.Random(point).uniform(0.0, KILL_WINDOWS[moment]), 3)


@pytest.mark.durability
@pytest.mark.parametrize(
    "point",
    range(KILL_POINTS),
    ids=[f"{i}-{moment}-{delay}s" for i in range(KILL_POINTS) for moment, delay in [kill_plan(i)]],
)
def test_kill_during_export_still_gives_orthanc_one_sr(
    export_stack: Stack,
    ingest: IngestClient,
    orthanc: Orthanc,
    fhir: FhirStandIn,
    tmp_path: Path,
    point: int,
) -> None:
    moment, delay = kill_plan(point)
    study_uid = storescu(export_stack, tmp_path / "chest", [chest(point % 2)])
    ingest.close_study(study_uid)
    try:
        if moment in ("stored", "exporting"):
            key = wait_until(
                lambda: stored_result(export_stack, study_uid),
                ANALYSIS_SECONDS,
                f"a stored result of {study_uid}",
                interval=0.005,
            )
        if moment == "exporting":
            wait_until(
                lambda: export_of(ingest, "pacs", key),
                EXPORT_SECONDS,
                "the C-STORE export's record",
                interval=0.005,
            )
        pause(delay, f"the seeded moment of the kill, after {moment}")
        export_stack.kill("ingest")
    finally:
        if "ingest" not in export_stack.pids:
            export_stack.start_ingest(RESTART_SECONDS)

    study = finished(ingest, study_uid)
    assert state_name(study) == "done", study.error
    exports = delivered(ingest, study.result_key, ["pacs", "web", "ehr"])
    assert "committed" in exports["pacs"].receipt
    # C-STORE (maybe twice, the second time after the 10 s ack wait) and STOW-RS: one SR.
    [sr] = srs(orthanc, study_uid)
    assert len(reports_of(fhir, sr_uid_in(orthanc, sr))) == 1
