"""The ingest's stable storage (services/ingest/spool.py) and its calling-AE allow-list
(services/ingest/peers.py).

Durability cannot be shown by killing the process (the page cache survives a kill -9), so the
spool is given a recording ``fsync`` and the tests check which inodes it was called on before
``store`` returned."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.ingest.peers import Peer, Peers
from services.ingest.spool import ResultStore, Spool, StoreOutcome, sha256_of

STUDY = "1.2.826.0.1.3680043.8.498.10"
SOP = "1.2.826.0.1.3680043.8.498.11"


class RecordingFsync:
    """Calls through to os.fsync and remembers (device, inode) of every descriptor synced."""

    def __init__(self) -> None:
        self.synced: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        with self._lock:
            self.synced.append((st.st_dev, st.st_ino))
        os.fsync(fd)


def inode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def received(spool: Spool, data: bytes, name: str = "piece") -> Path:
    """A finished transfer, as pynetdicom leaves it in the spool's tmp/."""
    path = spool.tmp / name
    path.write_bytes(data)
    return path


@pytest.fixture
def fsync() -> RecordingFsync:
    return RecordingFsync()


@pytest.fixture
def spool(tmp_path: Path, fsync: RecordingFsync) -> Spool:
    return Spool(tmp_path / "spool", fsync=fsync)


# -- instances ---------------------------------------------------------------------------------


def test_the_first_copy_is_stored_and_synced_file_then_directory(
    spool: Spool, fsync: RecordingFsync
) -> None:
    piece = received(spool, b"first copy")
    stored = spool.store(piece, STUDY, SOP)
    target = spool.instances / STUDY / f"{SOP}.dcm"
    assert stored.outcome == StoreOutcome.STORED
    assert stored.path == target
    assert target.read_bytes() == b"first copy"
    assert stored.sha256 == sha256_of(target)
    assert not piece.exists()
    assert list(spool.tmp.iterdir()) == []
    # The data (the target's inode) and the name (its directory) were both synced, in that
    # order; the new study directory's own name too (in instances/).
    synced = fsync.synced
    assert inode(target) in synced
    assert inode(target.parent) in synced
    assert synced.index(inode(target)) < len(synced) - 1 - synced[::-1].index(inode(target.parent))
    assert inode(spool.instances) in synced
    assert spool.count(STUDY) == 1
    assert spool.studies() == [STUDY]


def test_the_same_bytes_again_are_a_duplicate_and_leave_nothing_behind(
    spool: Spool, fsync: RecordingFsync
) -> None:
    spool.store(received(spool, b"first copy"), STUDY, SOP)
    fsync.synced.clear()
    piece = received(spool, b"first copy", "again")
    stored = spool.store(piece, STUDY, SOP)
    assert stored.outcome == StoreOutcome.DUPLICATE
    assert not piece.exists()
    assert spool.count(STUDY) == 1
    # A duplicate acknowledges the first copy: it is synced again before the answer (it may
    # have been linked by a process that died before syncing it).
    assert inode(stored.path) in fsync.synced
    assert inode(stored.path.parent) in fsync.synced


def test_other_bytes_for_a_stored_instance_are_a_conflict_and_the_first_copy_stays(
    spool: Spool,
) -> None:
    first = spool.store(received(spool, b"first copy"), STUDY, SOP)
    piece = received(spool, b"another copy", "other")
    stored = spool.store(piece, STUDY, SOP)
    assert stored.outcome == StoreOutcome.CONFLICT
    assert stored.path == first.path
    assert stored.sha256 != first.sha256
    assert first.path.read_bytes() == b"first copy"
    assert not piece.exists()
    assert spool.count(STUDY) == 1


@pytest.mark.parametrize(
    ("study", "sop"),
    [("not-a-uid", SOP), (STUDY, "1.2.abc"), ("../escape", SOP), (STUDY, "../../x")],
)
def test_a_study_or_instance_uid_that_is_no_uid_is_refused(
    spool: Spool, study: str, sop: str
) -> None:
    piece = received(spool, b"data")
    with pytest.raises(ValueError, match="not a DICOM UID"):
        spool.store(piece, study, sop)
    assert not any(spool.instances.iterdir())


def test_two_associations_storing_one_instance_at_once_store_it_once(tmp_path: Path) -> None:
    # Both threads pass the "already there?" check, then meet at their first fsync (of the
    # received file), so both reach link(2) together: exactly one may win.
    gate = threading.Barrier(2, timeout=10)
    met: set[int] = set()

    def fsync(fd: int) -> None:
        me = threading.get_ident()
        if me not in met:
            met.add(me)
            gate.wait()
        os.fsync(fd)

    spool = Spool(tmp_path / "spool", fsync=fsync)
    outcomes: list[StoreOutcome] = []
    errors: list[BaseException] = []

    def send(name: str) -> None:
        try:
            outcomes.append(spool.store(received(spool, b"same bytes", name), STUDY, SOP).outcome)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=send, args=(f"piece-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(outcomes) == sorted([StoreOutcome.STORED, StoreOutcome.DUPLICATE])
    assert len(met) == 2  # both really raced past the existence check
    assert spool.count(STUDY) == 1
    assert list(spool.tmp.iterdir()) == []


def test_a_failed_sync_is_not_a_stored_instance_and_removes_the_piece(tmp_path: Path) -> None:
    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    spool = Spool(tmp_path / "spool", fsync=fsync)
    piece = received(spool, b"data")
    with pytest.raises(OSError):
        spool.store(piece, STUDY, SOP)
    assert not piece.exists()
    assert spool.count(STUDY) == 0


def test_sweep_tmp_removes_pieces_older_than_asked(spool: Spool) -> None:
    old = received(spool, b"aborted", "old")
    new = received(spool, b"arriving", "new")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    assert spool.sweep_tmp(older_than=3600) == 1
    assert not old.exists()
    assert new.exists()
    assert spool.sweep_tmp() == 1
    assert list(spool.tmp.iterdir()) == []


def test_deleting_a_study_removes_its_files(spool: Spool) -> None:
    spool.store(received(spool, b"a"), STUDY, SOP)
    spool.store(received(spool, b"b"), STUDY, SOP + ".2")
    assert spool.delete_study(STUDY) == 2
    assert spool.count(STUDY) == 0
    assert spool.studies() == []


def test_the_watermark_compares_the_disk_use(spool: Spool) -> None:
    assert spool.above_watermark(1e-9)
    assert not spool.above_watermark(1.0)


# -- results -----------------------------------------------------------------------------------


def test_a_result_is_stored_once_and_synced(spool: Spool, fsync: RecordingFsync) -> None:
    results = ResultStore(spool)
    key = "ab" * 20
    assert results.put(key, {"response.json": b"{}", "sr.dcm": b"DICM"})
    assert results.read(key) == {"response.json": b"{}", "sr.dcm": b"DICM"}
    assert inode(results.path(key) / "sr.dcm") in fsync.synced
    assert inode(results.path(key)) in fsync.synced
    assert inode(results.root) in fsync.synced
    # A second put (a redelivered job) keeps the first result.
    assert not results.put(key, {"response.json": b"other"})
    assert results.read(key) == {"response.json": b"{}", "sr.dcm": b"DICM"}
    assert [p.name for p in results.root.iterdir()] == [key]


def test_a_result_interrupted_while_written_is_not_there(tmp_path: Path) -> None:
    calls = 0

    def fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second file of the result
            raise OSError(28, "No space left on device")
        os.fsync(fd)

    spool = Spool(tmp_path / "spool", fsync=fsync)
    results = ResultStore(spool)
    key = "cd" * 20
    with pytest.raises(OSError):
        results.put(key, {"a.json": b"1", "b.json": b"2"})
    assert not results.exists(key)
    assert results.read(key) == {}
    assert [p.name.startswith(".") for p in results.root.iterdir()] == [True]
    results.sweep_partial()
    assert list(results.root.iterdir()) == []
    # Stored whole on the next try.
    assert results.put(key, {"a.json": b"1", "b.json": b"2"})
    assert results.read(key) == {"a.json": b"1", "b.json": b"2"}


def test_result_keys_and_file_names_are_plain(spool: Spool) -> None:
    results = ResultStore(spool)
    with pytest.raises(ValueError, match="hex digest"):
        results.put("../x", {"a": b""})
    with pytest.raises(ValueError, match="plain"):
        results.put("ef" * 20, {"../a": b""})
    assert not results.exists("ef" * 20)
    assert results.delete("ef" * 20) is False


# -- peers -------------------------------------------------------------------------------------


def test_without_a_peers_file_only_loopback_callers_are_admitted() -> None:
    peers = Peers.load(None)
    assert peers.loopback_only
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert peers.admit("ANY_TITLE", address).admitted, address
    for address in ("10.0.0.1", "192.168.1.7", "::ffff:10.0.0.1", "2001:db8::1", "localhost"):
        verdict = peers.admit("ANY_TITLE", address)
        assert not verdict.admitted, address
        assert verdict.reason


def write_peers(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "peers.yaml"
    path.write_text(text)
    return path


def test_a_listed_title_from_a_listed_network_is_admitted_with_its_quiet_period(
    tmp_path: Path,
) -> None:
    peers = Peers.load(
        write_peers(
            tmp_path,
            "peers:\n"
            "  - ae_title: CT_SCANNER_1\n"
            "    addresses: [10.20.0.0/16, 192.168.1.7]\n"
            "    quiet_seconds: 60\n"
            "  - ae_title: PACS_ROUTER\n"
            "    addresses: [10.30.4.12]\n",
        )
    )
    assert not peers.loopback_only
    verdict = peers.admit("CT_SCANNER_1", "10.20.3.4")
    assert verdict.admitted
    assert verdict.quiet_seconds == 60
    assert peers.admit("CT_SCANNER_1    ", "192.168.1.7").admitted  # AE padding
    assert peers.admit("CT_SCANNER_1", "::ffff:10.20.0.1").admitted
    router = peers.admit("PACS_ROUTER", "10.30.4.12")
    assert router.admitted and router.quiet_seconds is None  # the service's default applies

    unknown = peers.admit("WORKSTATION", "10.20.3.4")
    assert not unknown.admitted
    assert unknown.reason == "calling AE title not in the peers file"
    elsewhere = peers.admit("CT_SCANNER_1", "10.21.0.1")
    assert not elsewhere.admitted
    assert elsewhere.reason == "source address not listed for this calling AE title"
    # Another peer's address does not admit a title.
    assert not peers.admit("PACS_ROUTER", "10.20.3.4").admitted
    # A file lists who may call: loopback is not implied.
    assert not peers.admit("WORKSTATION", "127.0.0.1").admitted
    assert not peers.admit("CT_SCANNER_1", "not-an-address").admitted


@pytest.mark.parametrize(
    "entry",
    [
        "  - ae_title: FAR_TOO_LONG_AE_TITLE\n    addresses: [10.0.0.1]\n",
        "  - ae_title: 'BACK\\\\SLASH'\n    addresses: [10.0.0.1]\n",
        "  - ae_title: '   '\n    addresses: [10.0.0.1]\n",
        "  - ae_title: CT_1\n    addresses: [10.0.0.0/33]\n",
        "  - ae_title: CT_1\n    addresses: [scanner.example.org]\n",
        "  - ae_title: CT_1\n    addresses: []\n",
        "  - ae_title: CT_1\n    addresses: [10.0.0.1]\n    quiet_seconds: 0\n",
        "  - ae_title: CT_1\n    addresses: [10.0.0.1]\n    port: 104\n",
    ],
)
def test_a_bad_peers_entry_fails_at_load(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ValidationError):
        Peers.load(write_peers(tmp_path, "peers:\n" + entry))


def test_a_title_listed_twice_fails_at_load(tmp_path: Path) -> None:
    text = (
        "peers:\n"
        "  - ae_title: CT_1\n    addresses: [10.0.0.1]\n"
        "  - ae_title: 'CT_1 '\n    addresses: [10.0.0.2]\n"
    )
    with pytest.raises(ValueError, match="listed twice"):
        Peers.load(write_peers(tmp_path, text))


def test_an_empty_peers_file_admits_no_one(tmp_path: Path) -> None:
    peers = Peers.load(write_peers(tmp_path, ""))
    assert not peers.loopback_only
    assert not peers.admit("ANY", "127.0.0.1").admitted
    assert Peers([Peer(ae_title="A", addresses=["::1"])]).admit("A", "::1").admitted
