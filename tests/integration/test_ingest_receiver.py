"""The ingest's DICOM receiver in-process, against a real NATS server (no Triton, no gateway).

Wired as services/ingest/server.py wires it: an :class:`Engine` on an event loop in its own
thread, a :class:`Spool`, :class:`Peers`, a :class:`Receiver` whose ``run`` hands coroutines to
that loop and waits a bounded time, and the SCP from ``start_scp`` on 127.0.0.1, port 0. The
peers are dcmtk's ``echoscu``/``storescu`` and pynetdicom SCUs.

What is checked is what a modality relies on: an answer of success only once the instance is
on stable storage *and* recorded by the queue engine (the fsync and the engine write are
blocked, and no answer may leave meanwhile), 0xA700 (retry later) whenever either is missing,
failures with a reason for malformed datasets without losing the association, the allow-list
and TLS (with an idle connection that must not hold up others), and a NATS server that does
not fsync before acknowledging refused at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from loop_thread import LoopThread
from prometheus_client import REGISTRY
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from waiting import eventually, wait_until

from services.cli import natsserver
from services.cli.natsserver import NatsServer
from services.cli.pki import DevPki, create_dev_pki
from services.cli.samples import new_instance, to_bytes
from services.common.tls_files import PLAINTEXT, TlsFiles
from services.ingest.core import StudyRecord
from services.ingest.dimse import (
    CANNOT_UNDERSTAND,
    NOT_MATCHING_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
    HandshakeServer,
    Received,
    Receiver,
    start_scp,
)
from services.ingest.engine import Engine, SyncNotAlways
from services.ingest.peers import Peers
from services.ingest.spool import Fsync, Spool

pytestmark = pytest.mark.integration

T = TypeVar("T")
SCP_TITLE = "INGEST_TEST"
ENGINE_SECONDS = 2.0  # JetStream acknowledgement timeout
RUN_SECONDS = 10.0  # the receiver waits this long for the engine (well above SILENCE_SECONDS)
SILENCE_SECONDS = 1.0  # how long "no answer yet" is watched for
ANSWER_SECONDS = 15.0
TRAILING_PADDING = 0xFFFCFFFC  # Data Set Trailing Padding (PS3.10)


# -- wiring ------------------------------------------------------------------------------------


def monitoring_url(server: NatsServer) -> str:
    return f"http://127.0.0.1:{server.bound['monitoring']}"


def connect(loop: LoopThread, server: NatsServer, timeout: float = ENGINE_SECONDS) -> Engine:
    return loop.call(Engine.connect(server.url, monitoring_url(server), timeout, 60.0))


@pytest.fixture(scope="module", autouse=True)
def _restore_tempdir() -> Iterator[None]:
    # start_scp points the process's temporary directory at the spool (chunked receives land
    # there); other modules must not inherit a test's spool.
    before = tempfile.tempdir
    yield
    tempfile.tempdir = before


@pytest.fixture(autouse=True)
def _send_files_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    # pynetdicom SCUs send a file's dataset bytes as they are (no decode and re-encode), so
    # what was sent can be compared byte for byte with what was stored, and a request can
    # name another instance than its dataset (the file meta's UIDs go into the request).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.close()


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"), 0, 0)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def engine(loop: LoopThread, nats: NatsServer) -> Iterator[Engine]:
    connected = connect(loop, nats)
    yield connected
    loop.call(connected.close())


@dataclass
class Scp:
    server: HandshakeServer
    spool: Spool
    engine: Engine
    loop: LoopThread
    audits: list[Received] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def record(self, study_uid: str) -> StudyRecord | None:
        record, _ = self.loop.call(self.engine.study(study_uid))
        return record

    def stored(self, study_uid: str, sop_uid: str) -> Path:
        return self.spool.instances / study_uid / f"{sop_uid}.dcm"


Change = Callable[..., Coroutine[Any, Any, StudyRecord | None]]


@pytest.fixture
def ingest(tmp_path: Path, loop: LoopThread, engine: Engine) -> Iterator[Callable[..., Scp]]:
    """Start a receiver (own spool) on a free port; all are shut down after the test."""
    started: list[Scp] = []

    def start(
        *,
        fsync: Fsync = os.fsync,
        peers: Peers | None = None,
        watermark: float = 1.0,
        change: Change | None = None,
        tls: TlsFiles = PLAINTEXT,
        handshake_seconds: float = 10.0,
        on: Engine | None = None,
        run_seconds: float = RUN_SECONDS,
    ) -> Scp:
        used = on or engine
        spool = Spool(tmp_path / f"spool-{len(started)}", fsync=fsync)
        audits: list[Received] = []
        receiver = Receiver(
            spool,
            peers or Peers.load(None),
            loop.receiver_run(run_seconds),
            change or used.change,
            audits.append,
            30.0,
            watermark,
        )
        server = start_scp(
            receiver, spool, "127.0.0.1", 0, SCP_TITLE, 8, 30.0, tls, handshake_seconds
        )
        scp = Scp(server, spool, used, loop, audits)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.server.shutdown()


# -- instances and SCUs ------------------------------------------------------------------------


def chest(study: str | None = None, sop: str | None = None, patient: str = "TEST^ONE") -> Dataset:
    """A small DX chest instance with fresh UIDs (or the ones given)."""
    ds = new_instance(DigitalXRayImageStorageForPresentation)
    if sop is not None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = patient, "TEST-1"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(16))
    return ds


def write(folder: Path, ds: Dataset) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{generate_uid()}.dcm"
    path.write_bytes(to_bytes(ds))
    return path


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's dataset as encoded, without its preamble and file meta."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def elements(ds: Dataset) -> dict[int, object]:
    """A dataset's elements and values, without the trailing padding peers may drop."""
    return {int(e.tag): e.value for e in ds if e.tag != TRAILING_PADDING}


def scu(ae_title: str = "TESTSCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ANSWER_SECONDS
    ae.connection_timeout = ANSWER_SECONDS  # TCP connect and TLS handshake (default: none)
    return ae


@contextlib.contextmanager
def association(
    port: int,
    contexts: list[tuple[str, str]] | None = None,
    ae_title: str = "TESTSCU",
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> Iterator[Association]:
    """An association to the SCP proposing (SOP class, transfer syntax) pairs (default: DX
    in explicit VR little endian) and Verification; released (or aborted) afterwards."""
    ae = scu(ae_title)
    ae.add_requested_context(Verification)
    for sop_class, syntax in contexts or [
        (DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    ]:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=SCP_TITLE, tls_args=tls_args)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


def status_of(answer: Dataset) -> int:
    assert "Status" in answer, "no C-STORE response came back"
    return int(answer.Status)


def store(port: int, path: Path) -> Dataset:
    meta, _ = split_dataset(path)
    pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    with association(port, [pair]) as assoc:
        assert assoc.is_established
        return assoc.send_c_store(path)


def counter(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# -- real files, real SCUs ---------------------------------------------------------------------

# Sent by storescu, each with the option proposing its compressed transfer syntax (storescu
# proposes only uncompressed ones by default, and fails to convert what it cannot decode):
# explicit VR little endian with JPEG 2000 lossless, then JPEG 2000.
BY_STORESCU = (
    ("-xv", ("pydicom-testfiles/CT_small.dcm", "pydicom-testfiles/MR_small_jp2klossless.dcm")),
    ("-xw", ("pydicom-testfiles/JPEG2000.dcm",)),
)
# Sent by pynetdicom: a three-instance implicit VR CT series of one study, an SR document
# (no pixels) and an RLE enhanced MR.
BY_PYNETDICOM = (
    "dcmqi/segmentations/23x38x3/image/IMG0001.dcm",
    "dcmqi/segmentations/23x38x3/image/IMG0002.dcm",
    "dcmqi/segmentations/23x38x3/image/IMG0003.dcm",
    "pydicom-testfiles/reportsi.dcm",
    "pydicom-data/emri_small_RLE.dcm",
)


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(tool)
    assert binary is not None, f"dcmtk's {tool} is not on PATH"
    return subprocess.run(
        [binary, *args],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dcmtk_and_pynetdicom_store_real_files_durably_and_counted(
    ingest: Callable[..., Scp], dicom_dir: Path
) -> None:
    scp = ingest()
    port = str(scp.port)
    echo = dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", SCP_TITLE, "127.0.0.1", port)
    assert echo.returncode == 0, echo.stdout + echo.stderr

    sent = []
    for proposal, names in BY_STORESCU:
        paths = [dicom_dir / name for name in names]
        stored = dcmtk(
            "storescu", "-R", proposal, "-aet", "STORESCU", "-aec", SCP_TITLE, "127.0.0.1",
            port, *map(str, paths),
        )  # fmt: skip
        assert stored.returncode == 0, stored.stdout + stored.stderr
        sent += paths

    files = [dicom_dir / name for name in BY_PYNETDICOM]
    pairs = sorted(
        {
            (str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
            for m, _ in map(split_dataset, files)
        }
    )
    with association(scp.port, pairs) as assoc:
        assert assoc.is_established
        for path in files:
            assert status_of(assoc.send_c_store(path)) == SUCCESS, path.name

    by_study: dict[str, int] = {}
    for path in [*sent, *files]:
        meta, _ = split_dataset(path)
        original = dcmread(path)
        study = str(original.StudyInstanceUID)
        by_study[study] = by_study.get(study, 0) + 1
        copy = scp.stored(study, str(original.SOPInstanceUID))
        assert copy.is_file(), f"{path.name} is not in the spool"
        copy_meta, _ = split_dataset(copy)
        assert copy_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        # Each went in its own transfer syntax (the SCP accepts every one the decoder reads).
        assert copy_meta.TransferSyntaxUID == meta.TransferSyntaxUID, path.name
        if path in files:
            # pynetdicom sent the file's dataset bytes: stored exactly as they came.
            assert dataset_bytes(copy) == dataset_bytes(path), f"{path.name} changed on the way"
        else:
            # storescu re-encodes (dropping the trailing padding): the same elements arrive.
            assert elements(dcmread(copy)) == elements(original), f"{path.name} changed"

    for study, count in by_study.items():
        record = scp.record(study)
        assert record is not None, "no study record in the engine"
        assert record.instances == count
        assert record.state == "receiving"
        assert record.calling_ae in {"STORESCU", "TESTSCU"}
        assert record.source_address == "127.0.0.1"
        assert scp.spool.count(study) == count
    assert by_study["1.2.826.0.1.3680043.2.1125.1.99615878007501689887866317012655114"] == 3
    assert {a.outcome for a in scp.audits} == {"stored"}
    assert len(scp.audits) == len(sent) + len(files)
    assert list(scp.spool.tmp.iterdir()) == []


# -- nothing is acknowledged before it is durable ----------------------------------------------


class Sender:
    """One C-STORE from its own thread; ``answer`` is set when the response came back."""

    def __init__(self, port: int, path: Path) -> None:
        self.answer: Dataset | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._send, args=(port, path), daemon=True)
        self._thread.start()

    def _send(self, port: int, path: Path) -> None:
        try:
            self.answer = store(port, path)
        except BaseException as err:
            self.error = err

    def answered(self) -> bool:
        return self.answer is not None or self.error is not None

    def join(self) -> Dataset:
        self._thread.join(ANSWER_SECONDS)
        assert self.error is None, repr(self.error)
        assert self.answer is not None, "no answer"
        return self.answer


def test_no_answer_leaves_before_the_instance_is_fsynced(
    ingest: Callable[..., Scp], tmp_path: Path
) -> None:
    entered = threading.Event()
    release = threading.Event()

    def blocking_fsync(fd: int) -> None:
        entered.set()
        release.wait(ANSWER_SECONDS * 2)
        os.fsync(fd)

    scp = ingest(fsync=blocking_fsync)
    ds = chest()
    sender = Sender(scp.port, write(tmp_path / "out", ds))
    try:
        wait_until(entered.is_set, ANSWER_SECONDS, "the receiver never called fsync")
        assert not eventually(sender.answered, SILENCE_SECONDS), (
            "the C-STORE was answered while its fsync had not returned"
        )
        assert scp.record(ds.StudyInstanceUID) is None  # nor was it recorded before
    finally:
        release.set()
    assert status_of(sender.join()) == SUCCESS
    assert scp.stored(ds.StudyInstanceUID, ds.SOPInstanceUID).is_file()
    record = scp.record(ds.StudyInstanceUID)
    assert record is not None and record.instances == 1


def test_no_answer_leaves_before_the_engine_acknowledges(
    ingest: Callable[..., Scp], engine: Engine, loop: LoopThread, tmp_path: Path
) -> None:
    entered = threading.Event()
    release = asyncio.Event()

    async def held_change(study_uid: str, change: Any) -> StudyRecord | None:
        entered.set()
        await release.wait()
        return await engine.change(study_uid, change)

    scp = ingest(change=held_change)
    ds = chest()
    sender = Sender(scp.port, write(tmp_path / "out", ds))
    try:
        wait_until(entered.is_set, ANSWER_SECONDS, "the receiver never wrote to the engine")
        # The instance is on disk already, but not recorded: no answer yet.
        assert scp.stored(ds.StudyInstanceUID, ds.SOPInstanceUID).is_file()
        assert not eventually(sender.answered, SILENCE_SECONDS), (
            "the C-STORE was answered before the engine acknowledged its record"
        )
    finally:
        loop.loop.call_soon_threadsafe(release.set)
    assert status_of(sender.join()) == SUCCESS
    record = scp.record(ds.StudyInstanceUID)
    assert record is not None and record.instances == 1


def test_an_engine_that_never_acknowledges_is_out_of_resources(
    ingest: Callable[..., Scp], tmp_path: Path
) -> None:
    async def hanging_change(study_uid: str, change: Any) -> StudyRecord | None:
        await asyncio.Event().wait()
        return None

    scp = ingest(change=hanging_change, run_seconds=1.0)
    started = time.monotonic()
    answer = store(scp.port, write(tmp_path / "out", chest()))
    assert status_of(answer) == OUT_OF_RESOURCES
    assert answer.ErrorComment == "queue engine unavailable"
    assert time.monotonic() - started >= 1.0  # it was waited for, not refused at once


def test_while_nats_is_down_stores_are_refused_for_later_and_then_succeed(
    ingest: Callable[..., Scp], loop: LoopThread, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "nats", 0, 0)
    server.start()
    own = connect(loop, server, timeout=1.0)
    try:
        scp = ingest(on=own)
        out = tmp_path / "out"
        study = generate_uid()
        assert status_of(store(scp.port, write(out, chest(study)))) == SUCCESS
        down = counter("imaging_ingest_stores_total", {"outcome": "engine_down"})

        server.kill()
        with association(scp.port) as assoc:
            assert assoc.is_established
            for _ in range(2):  # the association goes on after a refusal
                answer = assoc.send_c_store(write(out, chest(study)))
                assert status_of(answer) == OUT_OF_RESOURCES
                assert answer.ErrorComment == "queue engine unavailable"
                assert assoc.is_established
            assert int(assoc.send_c_echo().Status) == SUCCESS
        assert counter("imaging_ingest_stores_total", {"outcome": "engine_down"}) == down + 2

        server.start()  # same home, same ports: the client reconnects by itself
        wait_until(lambda: own.nc.is_connected, 30, "the engine did not reconnect to NATS")
        last = chest(study)
        with association(scp.port) as assoc:
            assert status_of(assoc.send_c_store(write(out, last))) == SUCCESS
        record = scp.record(study)
        # The refused instances are on disk (their retry will be a duplicate): all counted.
        assert record is not None and record.instances == 4
        assert scp.stored(study, last.SOPInstanceUID).is_file()
    finally:
        server.kill()
        loop.call(own.close())


def test_above_the_disk_watermark_stores_are_refused_for_later(
    ingest: Callable[..., Scp], tmp_path: Path
) -> None:
    scp = ingest(watermark=1e-9)
    ds = chest()
    answer = store(scp.port, write(tmp_path / "out", ds))
    assert status_of(answer) == OUT_OF_RESOURCES
    assert answer.ErrorComment == "spool disk above its watermark"
    assert not scp.stored(ds.StudyInstanceUID, ds.SOPInstanceUID).exists()
    assert list(scp.spool.tmp.iterdir()) == []
    assert scp.record(ds.StudyInstanceUID) is None


# -- malformed datasets ------------------------------------------------------------------------


def renamed_in_request(path: Path, **meta: str) -> Path:
    """The file with other file meta UIDs: what pynetdicom puts in the C-STORE request (the
    dataset itself unchanged; pydicom would align the meta with the dataset on writing)."""
    file_meta, offset = split_dataset(path)
    for keyword, value in meta.items():
        setattr(file_meta, keyword, UID(value))
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, file_meta, enforce_standard=True)
    path.write_bytes(out.getvalue() + path.read_bytes()[offset:])
    return path


def without_study(folder: Path) -> Path:
    ds = chest()
    del ds.StudyInstanceUID
    return write(folder, ds)


def bad_study_uid(folder: Path) -> Path:
    ds = chest()
    ds.StudyInstanceUID = "1.2.03.x"
    return write(folder, ds)


def other_instance_in_request(folder: Path) -> Path:
    return renamed_in_request(write(folder, chest()), MediaStorageSOPInstanceUID=generate_uid())


def other_class_in_request(folder: Path) -> Path:
    # Proposed and requested as DX; the dataset says it is a CR image.
    ds = chest()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    return renamed_in_request(
        write(folder, ds), MediaStorageSOPClassUID=DigitalXRayImageStorageForPresentation
    )


def not_a_dataset(folder: Path) -> Path:
    path = write(folder, chest())
    _, offset = split_dataset(path)
    path.write_bytes(path.read_bytes()[:offset] + b"\xff" * 64)
    return path


@pytest.mark.filterwarnings("ignore:.*:UserWarning:pydicom")
@pytest.mark.parametrize(
    ("malformed", "status", "comment"),
    [
        (without_study, CANNOT_UNDERSTAND, "StudyInstanceUID is missing"),
        (bad_study_uid, CANNOT_UNDERSTAND, "StudyInstanceUID is not a valid UID"),
        (other_instance_in_request, NOT_MATCHING_SOP_CLASS, "differs from the request"),
        (other_class_in_request, NOT_MATCHING_SOP_CLASS, "differs from the request"),
        # pydicom reads garbage leniently: refused for what it lacks, or as unparseable.
        (not_a_dataset, CANNOT_UNDERSTAND, ""),
    ],
)
def test_a_malformed_dataset_fails_with_a_reason_and_the_association_goes_on(
    ingest: Callable[..., Scp],
    tmp_path: Path,
    malformed: Callable[[Path], Path],
    status: int,
    comment: str,
) -> None:
    scp = ingest()
    out = tmp_path / "out"
    good = chest()
    with association(scp.port) as assoc:
        assert assoc.is_established
        answer = assoc.send_c_store(malformed(out))
        assert status_of(answer) == status
        assert answer.ErrorComment
        assert comment in str(answer.ErrorComment)
        assert assoc.is_established
        assert status_of(assoc.send_c_store(write(out, good))) == SUCCESS
    assert [p.parent.name for p in scp.spool.instances.glob("*/*.dcm")] == [good.StudyInstanceUID]
    assert list(scp.spool.tmp.iterdir()) == []


# -- copies ------------------------------------------------------------------------------------


def test_a_resent_instance_is_stored_once_and_a_different_copy_never_replaces_it(
    ingest: Callable[..., Scp], tmp_path: Path
) -> None:
    scp = ingest()
    out = tmp_path / "out"
    first = chest()
    first_file = write(out, first)
    conflicts = counter("imaging_ingest_conflicting_copies_total")
    with association(scp.port) as assoc:
        assert status_of(assoc.send_c_store(first_file)) == SUCCESS
        assert status_of(assoc.send_c_store(first_file)) == SUCCESS
        other = chest(first.StudyInstanceUID, first.SOPInstanceUID, patient="TEST^OTHER")
        other.SeriesInstanceUID = first.SeriesInstanceUID
        # The second copy is acknowledged (the first is durable); it replaces nothing.
        assert status_of(assoc.send_c_store(write(out, other))) == SUCCESS
    stored = scp.stored(first.StudyInstanceUID, first.SOPInstanceUID)
    assert dataset_bytes(stored) == dataset_bytes(first_file)
    assert scp.spool.count(first.StudyInstanceUID) == 1
    assert [a.outcome for a in scp.audits] == ["stored", "duplicate", "conflict"]
    assert counter("imaging_ingest_conflicting_copies_total") == conflicts + 1
    record = scp.record(first.StudyInstanceUID)
    assert record is not None and record.instances == 1


# -- who may call ------------------------------------------------------------------------------


def test_only_listed_calling_titles_are_admitted(
    ingest: Callable[..., Scp], tmp_path: Path
) -> None:
    listing = tmp_path / "peers.yaml"
    listing.write_text("peers:\n  - ae_title: GOOD\n    addresses: [127.0.0.1]\n")
    scp = ingest(peers=Peers.load(listing))
    rejected = counter("imaging_ingest_associations_rejected_total")
    with association(scp.port, ae_title="BAD") as assoc:
        assert assoc.is_rejected
        assert not assoc.is_established
    assert counter("imaging_ingest_associations_rejected_total") == rejected + 1
    ds = chest()
    with association(scp.port, ae_title="GOOD") as assoc:
        assert assoc.is_established
        assert status_of(assoc.send_c_store(write(tmp_path / "out", ds))) == SUCCESS
    record = scp.record(ds.StudyInstanceUID)
    assert record is not None and record.calling_ae == "GOOD"


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return create_dev_pki(tmp_path_factory.mktemp("pki"))


def client_context(pki: DevPki, certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if certificate:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def test_tls_needs_a_client_certificate_and_an_idle_connection_blocks_no_one(
    ingest: Callable[..., Scp], pki: DevPki, tmp_path: Path
) -> None:
    scp = ingest(
        tls=TlsFiles(pki.server_cert, pki.server_key, pki.ca_cert),
        # Far beyond the SCU's own timeouts: a handshake waited for in the accept loop would
        # fail the associations below.
        handshake_seconds=60.0,
    )
    out = tmp_path / "out"

    with association(scp.port) as assoc:
        assert not assoc.is_established, "a plaintext association on the TLS port"
    with association(scp.port, tls_args=(client_context(pki, False), "127.0.0.1")) as assoc:
        assert not assoc.is_established, "a peer without a client certificate associated"

    idle = socket.create_connection(("127.0.0.1", scp.port))
    try:
        started = time.monotonic()
        ds = chest()
        with association(scp.port, tls_args=(client_context(pki), "127.0.0.1")) as assoc:
            assert assoc.is_established, "a TLS peer was held up (or refused)"
            assert status_of(assoc.send_c_store(write(out, ds))) == SUCCESS
        assert time.monotonic() - started < ANSWER_SECONDS
        # The idle connection is still open: it was not what unblocked the association.
        idle.setblocking(False)
        with pytest.raises(BlockingIOError):
            idle.recv(1)
    finally:
        idle.close()
    assert scp.stored(ds.StudyInstanceUID, ds.SOPInstanceUID).is_file()


# -- a server that does not fsync --------------------------------------------------------------


def test_a_nats_server_without_sync_always_is_refused(
    loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = natsserver.config_text

    def lax(store_dir: Path, ports_dir: Path, port: int, monitoring: int) -> str:
        text = real(store_dir, ports_dir, port, monitoring)
        assert "sync_interval: always" in text
        return text.replace("  sync_interval: always\n", "")

    monkeypatch.setattr(natsserver, "config_text", lax)
    server = NatsServer(tmp_path / "lax-nats", 0, 0)
    server.start()
    try:
        assert "sync_interval" not in server.config.read_text()
        with pytest.raises(SyncNotAlways, match="sync_interval: always"):
            connect(loop, server)
    finally:
        server.kill()
