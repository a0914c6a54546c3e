"""The DICOM SCP (pynetdicom): C-ECHO and C-STORE, durable before it answers success.

Each C-STORE is written to a file as it arrives (pynetdicom's chunked receive,
``_config.STORE_RECV_CHUNKED_DATASET``: no dataset is held in memory or parsed whole), then
:meth:`Receiver.store` makes it durable (services/ingest/spool.py), records it in the state
engine (a JetStream write acknowledged after the server's fsync) and audits it, and only then
answers 0x0000. Status codes (PS3.4 Annex B.2.3, C-STORE):

- 0x0000 success: the instance (or an identical copy received before) is on stable storage;
- 0xA700 out of resources: the spool's disk is above its watermark, the queue engine did not
  acknowledge in time, or the disk refused the write; transient, the peer retries later;
- 0xA900 data set does not match SOP class: the dataset names another SOP class or instance
  than its C-STORE request;
- 0xC000 cannot understand: not a parseable dataset, or a required UID missing or invalid;
- 0x0110 processing failure: anything unexpected (logged with its traceback, never raised
  into pynetdicom: a handler's exception would abort the whole association).

The AE also accepts Storage Commitment Push Model with the peer as SCP (SCP/SCU role selection):
a destination our exporter stored to opens an association back to report, by N-EVENT-REPORT,
which instances it committed (PS3.4 J.3.3); :meth:`Receiver.on_event_report` hands the report
to the senders' :class:`~services.ingest.senders.dicom.Commitments`. Such a peer is admitted
by the allow-list like any caller.

Handlers never log identity values: no UID, name or ID of the dataset; the calling AE title
and address only once checked against their VR.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.common.dicom import DECODABLE_TRANSFER_SYNTAXES, PIXEL_KEYWORDS, is_ae_title, is_uid
from services.common.tls_files import TlsFiles
from services.ingest import monitoring
from services.ingest.core import InstanceFacts, StudyRecord, new_study
from services.ingest.engine import EngineUnavailable
from services.ingest.peers import Peers
from services.ingest.senders.dicom import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    Commitments,
    parse_report,
)
from services.ingest.spool import Spool, StoreOutcome

log = logging.getLogger("imaging.ingest.dimse")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_MATCHING_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

# Every C-STORE goes to a file (the spool's tmp/, set as the process's temporary directory, so
# that the durable rename is on one filesystem).
_config.STORE_RECV_CHUNKED_DATASET = True
# pynetdicom's standard handlers log requests at INFO (and datasets at DEBUG): ours log what
# matters without identity values.
_config.LOG_HANDLER_LEVEL = "none"
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class Malformed(ValueError):
    """Why a received dataset cannot be stored (said to the peer; quotes no value)."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def read_facts(path: Path, digest: str = "") -> InstanceFacts:
    """The header facts of a Part 10 file, pixels never read (values deferred past 1 KiB)."""
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
        meta = ds.file_meta
        facts = InstanceFacts(
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            sop_class_uid=_text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID"),
            modality=_text(ds, "Modality").upper(),
            body_part_examined=_text(ds, "BodyPartExamined").upper(),
            view_position=_text(ds, "ViewPosition").upper(),
            has_pixels=any(k in ds for k in PIXEL_KEYWORDS),
            instance_number=int(ds.get("InstanceNumber") or 0),
            size=path.stat().st_size,
            sha256=digest,
            name=path.name,
            study_instance_uid=_text(ds, "StudyInstanceUID"),
        )
    except Exception as err:  # pydicom raises many kinds on bad bytes
        raise Malformed(f"not a parseable DICOM dataset ({type(err).__name__})") from err
    for keyword, value in (
        ("StudyInstanceUID", facts.study_instance_uid),
        ("SeriesInstanceUID", facts.series_instance_uid),
        ("SOPInstanceUID", facts.sop_instance_uid),
        ("SOPClassUID", facts.sop_class_uid),
    ):
        if not value:
            raise Malformed(f"{keyword} is missing")
        if not is_uid(value):
            raise Malformed(f"{keyword} is not a valid UID")
    return facts


@dataclass(frozen=True)
class Received:
    """What the receiver audits: never a value of the dataset, only its digest and class."""

    calling_ae: str
    address: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax: str
    sha256: str
    outcome: str
    status: int


class Receiver:
    """The C-STORE path; ``run`` executes a coroutine on the service's event loop and waits at
    most the engine's timeout for it (the handler runs on pynetdicom's association thread)."""

    def __init__(
        self,
        spool: Spool,
        peers: Peers,
        run: Callable[[Coroutine[Any, Any, Any]], Any],
        change: Callable[
            [str, Callable[[StudyRecord | None], StudyRecord | None]],
            Coroutine[Any, Any, StudyRecord | None],
        ],
        audit: Callable[[Received], None],
        quiet_seconds: float,
        watermark: float,
        clock: Callable[[], float] = time.time,
        commitments: Commitments | None = None,
    ) -> None:
        self._commitments = commitments
        self._spool = spool
        self._peers = peers
        self._run = run
        self._change = change
        self._audit = audit
        self._quiet = quiet_seconds
        self._watermark = watermark
        self._clock = clock

    # -- association ----------------------------------------------------------------------

    def on_requested(self, event: evt.Event) -> None:
        """Reject an unknown caller before any data: A-ASSOCIATE-RJ, rejected-permanent,
        service-user, calling-AE-title-not-recognized (PS3.8 9.3.4)."""
        assoc = event.assoc
        # The A-ASSOCIATE-RQ's calling AE title: pynetdicom copies it to requestor.ae_title
        # only during negotiation, after this event (until then it is "").
        request = getattr(assoc.requestor, "primitive", None)
        calling = request.calling_ae_title if request is not None else assoc.requestor.ae_title
        ae_title = str(calling)
        verdict = self._peers.admit(ae_title, str(assoc.requestor.address))
        if verdict.admitted:
            return
        shown = ae_title.strip() if is_ae_title(ae_title) else "(not a valid AE title)"
        log.warning("association from calling AE %s refused: %s", shown, verdict.reason)
        monitoring.ASSOCIATIONS_REJECTED.inc()
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()

    def on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    # -- Storage Commitment reports ---------------------------------------------------------

    def on_event_report(self, event: evt.Event) -> tuple[int, None]:
        """A peer's Storage Commitment result (N-EVENT-REPORT, Event Type 1: all committed,
        2: failures exist), for the sender waiting on its transaction. Answered 0x0000 even
        when no sender waits (an attempt given up on, or unknown): the peer did its part."""
        try:
            request = event.request
            if str(getattr(request, "AffectedSOPClassUID", "")) != STORAGE_COMMITMENT_PUSH_MODEL:
                return 0x0118, None  # no such SOP class: only commitment reports are taken
            transaction, committed, failed = parse_report(event.event_information)
            waited = self._commitments is not None and self._commitments.report(
                transaction, committed, failed
            )
            if not waited:
                log.warning(
                    "storage commitment report (event type %s) for a transaction no sender "
                    "waits for",
                    event.event_type,
                )
            else:
                log.info(
                    "storage commitment report: %d committed, %d failed",
                    len(committed),
                    len(failed),
                )
        except Exception:  # never into pynetdicom
            log.exception("storage commitment report failed unexpectedly")
            return PROCESSING_FAILURE, None
        return SUCCESS, None

    # -- C-STORE --------------------------------------------------------------------------

    def on_store(self, event: evt.Event) -> int | Dataset:
        started = time.perf_counter()
        assoc = event.assoc
        ae_title = str(assoc.requestor.ae_title).strip()
        address = str(assoc.requestor.address)
        try:
            status, outcome = self._store(event, ae_title, address)
        except Exception:  # never into pynetdicom: it would abort the association
            log.exception("C-STORE failed unexpectedly")
            status, outcome = _status(PROCESSING_FAILURE, "processing failure"), "failed"
        code = int(status.Status) if isinstance(status, Dataset) else int(status)
        monitoring.STORES.labels(outcome).inc()
        monitoring.STORE_SECONDS.observe(time.perf_counter() - started)
        if code != SUCCESS:
            log.info("C-STORE answered 0x%04X (%s)", code, outcome)
        return status if isinstance(status, Dataset) else code

    def _store(self, event: evt.Event, ae_title: str, address: str) -> tuple[Any, str]:
        path = Path(event.dataset_path)
        try:
            if self._spool.above_watermark(self._watermark):
                return _status(OUT_OF_RESOURCES, "spool disk above its watermark"), "disk_full"
            try:
                facts = read_facts(path)
            except Malformed as err:
                return _status(CANNOT_UNDERSTAND, str(err)), "malformed"
            request = cast(C_STORE, event.request)
            if (
                str(request.AffectedSOPClassUID) != facts.sop_class_uid
                or str(request.AffectedSOPInstanceUID) != facts.sop_instance_uid
            ):
                reason = "the dataset's SOP class or instance differs from the request's"
                return _status(NOT_MATCHING_SOP_CLASS, reason), "mismatch"
            study = facts.study_instance_uid
            try:
                stored = self._spool.store(path, study, facts.sop_instance_uid)
            except OSError:
                log.exception("the spool refused a write")
                return _status(OUT_OF_RESOURCES, "the spool refused the write"), "disk_error"
            if stored.outcome == StoreOutcome.CONFLICT:
                log.warning("a second, different copy of a stored SOP instance: the first kept")
                monitoring.CONFLICTS.inc()
            now = self._clock()
            count = self._spool.count(study)
            quiet = self._peers.admit(ae_title, address).quiet_seconds or self._quiet

            def received(current: StudyRecord | None) -> StudyRecord:
                record = current or new_study(study, now)
                new = stored.outcome == StoreOutcome.STORED
                return record.received(now, ae_title, address, count, quiet, new)

            try:
                self._run(self._change(study, received))
            except (EngineUnavailable, TimeoutError, OSError) as err:
                log.warning("queue engine unavailable: %s", type(err).__name__)
                return _status(OUT_OF_RESOURCES, "queue engine unavailable"), "engine_down"
            except Exception as err:  # nats-py's errors: the engine did not take it
                if type(err).__module__.startswith("nats"):
                    log.warning("queue engine refused: %s", type(err).__name__)
                    return _status(OUT_OF_RESOURCES, "queue engine unavailable"), "engine_down"
                raise
            self._audit(
                Received(
                    ae_title,
                    address,
                    study,
                    facts.sop_class_uid,
                    str(event.context.transfer_syntax),
                    stored.sha256,
                    stored.outcome.value,
                    SUCCESS,
                )
            )
            return SUCCESS, stored.outcome.value
        finally:
            path.unlink(missing_ok=True)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO
    return status


def server_context(files: TlsFiles) -> ssl.SSLContext | None:
    """TLS for DIMSE (PS3.15 B.1, the TLS secure transport profile) with the service's pair;
    with a CA, peers must present a certificate it signed."""
    if not files.serves_tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert), str(files.key))
    if files.ca is not None:
        context.load_verify_locations(str(files.ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HandshakeServer(ThreadedAssociationServer):
    """pynetdicom's server, except that TLS is negotiated on the association's own thread
    with a time limit: its accept loop otherwise runs the handshake itself, without a timeout,
    so one connection that sends nothing blocks every later association. TCP_NODELAY too:
    with Nagle, each small PDU waits for the peer's delayed ACK (tens of ms per instance)."""

    def __init__(self, *args: Any, handshake_seconds: float = 10.0, **kwargs: Any) -> None:
        self.handshake_seconds = handshake_seconds
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                request.settimeout(self.handshake_seconds)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
        except (OSError, ssl.SSLError) as err:
            log.info("TLS handshake with a peer failed: %s", type(err).__name__)
            monitoring.ASSOCIATIONS_REJECTED.inc()
            with contextlib.suppress(OSError):
                request.close()
            return
        super().process_request_thread(request, client_address)


def build_ae(ae_title: str, max_associations: int, timeout: float) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.network_timeout = timeout
    ae.dimse_timeout = timeout
    ae.acse_timeout = timeout
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    # The peer reports as SCP of the push model (it proposes that role); we are its SCU.
    ae.add_supported_context(
        STORAGE_COMMITMENT_PUSH_MODEL,
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        scu_role=True,
        scp_role=True,
    )
    for context in AllStoragePresentationContexts:
        syntax = context.abstract_syntax
        if syntax is not None:
            ae.add_supported_context(syntax, list(DECODABLE_TRANSFER_SYNTAXES))
    return ae


def start_scp(
    receiver: Receiver,
    spool: Spool,
    host: str,
    port: int,
    ae_title: str,
    max_associations: int,
    timeout: float,
    tls: TlsFiles,
    handshake_seconds: float,
) -> HandshakeServer:
    """Listen (port 0: any free one; the bound port is ``server.server_address[1]``)."""
    tempfile.tempdir = str(spool.tmp)  # chunked receive writes there: renames stay atomic
    spool.sweep_tmp()  # pieces of transfers a previous process never finished
    ae = build_ae(ae_title, max_associations, timeout)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, receiver.on_requested),
        (evt.EVT_C_ECHO, receiver.on_echo),
        (evt.EVT_C_STORE, receiver.on_store),
        (evt.EVT_N_EVENT_REPORT, receiver.on_event_report),
    ]
    server = cast(
        HandshakeServer,
        ae.make_server(
            (host, port),
            ssl_context=server_context(tls),
            evt_handlers=handlers,
            server_class=HandshakeServer,
            handshake_seconds=handshake_seconds,
        ),
    )
    # As AE.start_server does: the server's shutdown() removes itself from this list (and
    # raises ValueError, after closing the socket, when it is not there).
    ae._servers.append(server)
    thread = threading.Thread(target=server.serve_forever, name="dimse-accept", daemon=True)
    thread.start()
    return server
