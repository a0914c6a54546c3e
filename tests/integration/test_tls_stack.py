"""A whole local stack with mutual TLS and API keys on: what a hospital deployment runs.

Every API port (the four services and Triton's gRPC) must refuse plaintext and callers without
a certificate; the gateway must refuse calls without a valid key and audit every call, refused
ones included, naming the client and the model version Triton served.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from synthetic import dataset, to_bytes

from services.cli.audit_verify import EXIT_TAIL_UNVERIFIED, main_verify, verify
from services.cli.client import GatewayClient
from services.cli.pki import DevPki, create_dev_pki
from services.cli.stack import Ports, Stack
from services.common.audit import AuditKey
from services.common.tls_files import TlsFiles

pytestmark = pytest.mark.integration

API_KEY = "key-of-the-reading-room-workstation"
CLIENT = "reading-room"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77777"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return create_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_stack(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("tls-stack")
    keys = run_dir / "api-keys"
    keys.write_text(
        f"# name sha256(key)\n{CLIENT} {hashlib.sha256(API_KEY.encode()).hexdigest()}\n"
    )
    stack = Stack(
        run_dir=run_dir, ports=Ports.free(), extra_env={"IMAGING_API_KEYS_FILE": str(keys)}
    )
    stack.use_dev_pki(pki)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _client_files(pki: DevPki) -> TlsFiles:
    return TlsFiles(pki.client_cert, pki.client_key, pki.ca_cert)


def _internal_files(pki: DevPki) -> TlsFiles:
    """The services' own certificate: what the gateway presents to its peers and Triton."""
    return TlsFiles(pki.internal_cert, pki.internal_key, pki.internal_ca_cert)


def _credentials(files: TlsFiles, trust: Path) -> grpc.ChannelCredentials:
    assert files.key is not None and files.cert is not None
    return grpc.ssl_channel_credentials(
        trust.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )


def _study() -> list[bytes]:
    ds = dataset(np.full((64, 64), 90, np.uint8))
    ds.StudyInstanceUID = STUDY_UID
    return [to_bytes(ds)]


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


@pytest.mark.parametrize("service", ["gateway", "decoder", "preprocessor", "postprocessor"])
def test_api_ports_refuse_plaintext_and_callers_without_a_certificate(
    tls_stack: Stack, pki: DevPki, service: str
) -> None:
    address = f"127.0.0.1:{tls_stack.ports.grpc(service)}"
    trust = pki.ca_cert if service == "gateway" else pki.internal_ca_cert
    with grpc.insecure_channel(address) as plain, pytest.raises(grpc.RpcError) as caught:
        _health(plain)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    no_cert = grpc.ssl_channel_credentials(root_certificates=trust.read_bytes())
    with grpc.secure_channel(address, no_cert) as anonymous, pytest.raises(grpc.RpcError) as caught:
        _health(anonymous)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    allowed = _client_files(pki) if service == "gateway" else _internal_files(pki)
    with grpc.secure_channel(address, _credentials(allowed, trust)) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", ["decoder", "preprocessor", "postprocessor"])
def test_a_client_certificate_opens_no_inner_service(
    tls_stack: Stack, pki: DevPki, service: str
) -> None:
    """The workstation's certificate (signed by the edge CA) is refused in the handshake,
    whichever CA the caller trusts; the gateway's own calls go on (the studies below)."""
    address = f"127.0.0.1:{tls_stack.ports.grpc(service)}"
    for trust in (pki.internal_ca_cert, pki.ca_cert):
        credentials = _credentials(_client_files(pki), trust)
        with grpc.secure_channel(address, credentials) as channel:
            method = channel.unary_unary(f"/imaging.v1.{service.capitalize()}/Nothing")
            with pytest.raises(grpc.RpcError) as caught:
                method(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_plaintext_health_port_serves_health_and_nothing_else(tls_stack: Stack) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tls_stack.ports.health['gateway']}") as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        analyze = channel.unary_unary("/imaging.v1.Gateway/ListPipelines")
        with pytest.raises(grpc.RpcError) as caught:
            analyze(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _triton(address: str, files: TlsFiles) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        address,
        ssl=True,
        root_certificates=str(files.ca),
        private_key=str(files.key),
        certificate_chain=str(files.cert),
    )


def test_triton_takes_only_the_services_certificate_and_model_control_is_off(
    tls_stack: Stack, pki: DevPki
) -> None:
    refused = r"UNAVAILABLE|Socket closed|failed to connect|handshake|certificate"
    with pytest.raises(Exception, match=refused):
        triton.InferenceServerClient(tls_stack.triton_grpc_address).is_server_ready()
    for trust in (pki.ca_cert, pki.internal_ca_cert):  # the workstation's certificate
        workstation = _triton(
            tls_stack.triton_grpc_address,
            TlsFiles(pki.client_cert, pki.client_key, trust),
        )
        with pytest.raises(Exception, match=refused):
            workstation.infer("cxr_pneumonia", [triton.InferInput("x", [1, 1], "FP32")])
        workstation.close()
    client = _triton(tls_stack.triton_grpc_address, _internal_files(pki))
    assert client.is_server_ready()
    with pytest.raises(Exception, match=r"not allowed|polling is enabled|model control"):
        client.load_model("cxr_pneumonia")
    client.close()


def test_a_call_without_a_valid_key_is_unauthenticated(tls_stack: Stack, pki: DevPki) -> None:
    for key in ("", "not-the-key"):
        client = GatewayClient(tls_stack.gateway_address, files=_client_files(pki), api_key=key)
        with pytest.raises(grpc.RpcError) as caught:
            client.analyze(_study())
        client.close()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert API_KEY not in (caught.value.details() or "")


def test_with_a_key_findings_come_back_and_the_audit_names_client_and_served_model(
    tls_stack: Stack, pki: DevPki
) -> None:
    client = GatewayClient(tls_stack.gateway_address, files=_client_files(pki), api_key=API_KEY)
    study = _study()
    response = client.analyze(study, client_request_id="tls-audit-1")
    client.close()
    assert response.pipeline == "cxr_pneumonia" and len(response.findings) == 1
    records = [json.loads(line) for line in tls_stack.audit_log.read_text().splitlines()]
    (record,) = [r for r in records if r["request_id"] == "tls-audit-1"]
    assert record["client"] == CLIENT and record["status"] == "OK"
    assert (record["model_name"], record["model_version"]) == ("cxr_pneumonia", "2")
    assert record["instance_sha256"] == [hashlib.sha256(study[0]).hexdigest()]
    assert record["findings"][0]["code"] == response.findings[0].code
    text = tls_stack.audit_log.read_text()
    assert STUDY_UID not in text and API_KEY not in text
    refused = [r for r in records if r["status"] == "UNAUTHENTICATED"]
    assert refused and all(r["client"] == "" for r in refused)
    assert verify(tls_stack.audit_log, AuditKey.from_file(tls_stack.audit_key_file)) == []


def test_audit_verify_catches_an_edited_line(tls_stack: Stack, tmp_path: Path) -> None:
    lines = tls_stack.audit_log.read_text().splitlines()
    assert len(lines) >= 2
    edited = tmp_path / "audit.jsonl"
    record = json.loads(lines[0])
    record["client"] = "someone-else"
    edited.write_text("\n".join([json.dumps(record, sort_keys=True), *lines[1:]]) + "\n")
    key = str(tls_stack.audit_key_file)
    # No --expect or --checkpoints: the chain verifies, its tail is reported unanchored.
    assert main_verify(str(tls_stack.audit_log), key, []) == EXIT_TAIL_UNVERIFIED
    assert main_verify(str(edited), key, []) == 1


def test_no_identity_in_answers_logs_audit_or_metrics_with_tls_and_keys_on(
    tls_stack: Stack, pki: DevPki
) -> None:
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from test_identity_leaks import _cr, _leaks, boundary_corruptions

    variants = [v for _, v in boundary_corruptions(_cr())]
    assert len(variants) > 200
    # ...and the fuzzers' kinds of damage to the same identity-bearing file: flipped bytes,
    # truncation, inserted garbage (seeded, so a failure reproduces).
    rng = np.random.default_rng(20261202)
    original = _cr()
    for _ in range(120):
        data = bytearray(original)
        kind, at = rng.integers(3), int(rng.integers(132, len(data)))
        if kind == 0:
            for position in rng.integers(132, len(data), 8):
                data[int(position)] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            del data[at:]
        else:
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        variants.append(bytes(data))
    client = GatewayClient(tls_stack.gateway_address, files=_client_files(pki), api_key=API_KEY)

    def send(variant: bytes) -> bytes:
        # A request id of our own: a random hex one can hold a short needle like "93721".
        try:
            return client.analyze([variant], client_request_id="phi-tls").SerializeToString()
        except grpc.RpcError as err:
            return f"{err.code().name} {err.details()} {err.trailing_metadata()!r}".encode()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, variants))
    client.close()
    assert not [a for a in answers if _leaks(a)]
    files = [*Path(tls_stack.run_dir, "logs").glob("*.log")]
    leaking = [f.name for f in files if _leaks(f.read_bytes())]
    assert not leaking, f"identity in {leaking}"
    # The audit's hex digests (sha256, HMACs) can hold a short needle like "93721" by chance:
    # search every other field.
    digests = {"instance_sha256", "study_uid_hmac", "mac", "prev"}
    for line in tls_stack.audit_log.read_text().splitlines():
        record = {k: v for k, v in json.loads(line).items() if k not in digests}
        assert not _leaks(json.dumps(record).encode()), "identity in an audit record"
        assert all(len(h) == 64 for h in json.loads(line)["instance_sha256"])
    assert len(tls_stack.audit_log.read_text().splitlines()) >= len(variants)
    for service, port in tls_stack.ports.metrics.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert not _leaks(reply.read()), f"identity in the {service} metrics"


IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "OtherPatientIDs",
    "ReferringPhysicianName",
)


def _identity_strings(data: bytes) -> set[str]:
    """The file's own identity values that are distinctive enough to search for."""
    import pydicom
    from pydicom.datadict import keyword_dict

    try:
        ds = pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:
        return set()
    found = set()
    for keyword in IDENTITY_KEYWORDS:
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except Exception:
            continue
        for part in {value, *value.split("^")}:
            # Test files put words like "Modality" in PatientName: the reasons name attributes
            # by keyword, so keywords are not identity to look for.
            generic = part in keyword_dict or part.lower() in {"anonymized", "anonymous", "unknown"}
            if len(part) >= 6 and not generic:
                found.add(part)
    return found


def test_the_corpus_through_the_tls_stack_leaks_no_file_s_identity(
    tls_stack: Stack, pki: DevPki, dicom_dir: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in sorted(dicom_dir.rglob("*.dcm")) if p.stat().st_size < 16 * 2**20]
    assert len(files) > 250
    client = GatewayClient(tls_stack.gateway_address, files=_client_files(pki), api_key=API_KEY)

    def send(path: Path) -> tuple[set[str], bytes]:
        data = path.read_bytes()
        try:
            answer = client.analyze([data], client_request_id="phi-corpus").SerializeToString()
        except grpc.RpcError as err:
            answer = f"{err.code().name} {err.details()} {err.trailing_metadata()!r}".encode()
        return _identity_strings(data), answer

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, files))
    client.close()
    needles = set().union(*(n for n, _ in results))
    assert len(needles) > 20  # the corpus does carry identity strings to look for
    leaking = [
        (path.name, needle)
        for path, (own, answer) in zip(files, results, strict=True)
        for needle in own
        if needle.encode() in answer
    ]
    assert not leaking, leaking[:5]
    texts = [*Path(tls_stack.run_dir, "logs").glob("*.log")]
    for text in texts:
        content = text.read_text(errors="replace")
        found = sorted(n for n in needles if n in content)
        assert not found, f"{text.name} holds {len(found)} identity strings"


def test_the_rollout_tool_reaches_a_tls_triton_with_the_services_certificate_only(
    tls_stack: Stack, pki: DevPki
) -> None:
    from services.fleet.errors import PodCallFailed
    from services.fleet.golden import DEFAULT_REPOSITORY, answer
    from services.fleet.triton import TritonPod

    internal = _internal_files(pki)
    pod = TritonPod(tls_stack.triton_grpc_address, files=internal, server_name="localhost")
    assert pod.state("cxr_pneumonia").versions == (1, 2)
    # The golden check's inference goes over the same mutual TLS, and the served v2 passes it.
    golden = answer(DEFAULT_REPOSITORY, "cxr_pneumonia", 2)
    assert golden is not None
    assert golden.mismatch(pod.infer("cxr_pneumonia", 2, golden.input_arrays(), 30)) is None
    pod.close()
    elsewhere = TritonPod(
        tls_stack.triton_grpc_address, files=internal, server_name="other.example"
    )
    with pytest.raises(PodCallFailed, match="unreachable"):  # not a name in the certificate
        elsewhere.state("cxr_pneumonia")
    elsewhere.close()
    workstation = TritonPod(
        tls_stack.triton_grpc_address,
        files=TlsFiles(pki.client_cert, pki.client_key, pki.internal_ca_cert),
        server_name="localhost",
    )
    with pytest.raises(PodCallFailed, match="unreachable"):
        workstation.state("cxr_pneumonia")
    workstation.close()


def _listening_inodes() -> dict[str, str]:
    """inode -> local address of every listening TCP socket (IPv4 and IPv6)."""
    found: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found[fields[9]] = fields[1]
    return found


def _is_loopback(address: str) -> bool:
    host = address.split(":")[0]
    if len(host) == 8:  # IPv4, little-endian hex
        return bytes.fromhex(host)[::-1][0] == 127
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return words == bytes(15) + b"\x01" or (
        words[:12] == bytes(10) + b"\xff\xff" and words[12] == 127
    )


def _process_tree(root: int) -> set[int]:
    """``root`` and its descendants (Triton's python backend stubs, decoder workers)."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = status.read_text().split(" (", 1)
        except OSError:
            continue
        parent = int(rest.rsplit(") ", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(pid))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def test_every_listening_socket_of_the_stack_is_on_loopback(tls_stack: Stack) -> None:
    listening = _listening_inodes()
    seen: dict[str, list[str]] = {}
    for name, root in tls_stack.pids.items():
        for pid in _process_tree(root):
            try:
                links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
            except OSError:
                continue  # a process that ended meanwhile
            for link in links:
                inode = link.removeprefix("socket:[").removesuffix("]")
                if link.startswith("socket:[") and inode in listening:
                    seen.setdefault(name, []).append(listening[inode])
    assert {"tritonserver", "gateway", "decoder"} <= set(seen)
    wide = {name: [a for a in addresses if not _is_loopback(a)] for name, addresses in seen.items()}
    assert not any(wide.values()), wide


def test_triton_has_no_plaintext_http_and_no_secret_is_on_a_command_line(
    tls_stack: Stack,
) -> None:
    for path in ("/v2/health/ready", "/v2/models/cxr_pneumonia/infer", "/v2/repository/index"):
        url = f"http://127.0.0.1:{tls_stack.ports.triton_http}{path}"
        with pytest.raises(OSError):  # nothing listens: connection refused
            urllib.request.urlopen(url, data=b"{}" if "infer" in path else None, timeout=5)
    secrets = [
        p.read_text().strip()
        for p in tls_stack.run_dir.rglob("*")
        if p.is_file() and p.stat().st_mode & 0o777 == 0o600 and p.stat().st_size < 4096
        and "key" in p.name
    ]  # fmt: skip
    assert secrets  # the audit key at least
    command_lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command_lines.append(cmdline.read_bytes().decode(errors="replace"))
        except OSError:
            continue
    assert any("tritonserver" in c for c in command_lines)
    assert not [c for c in command_lines if "admin-key" in c or any(k in c for k in secrets)]


def test_logs_run_dir_and_triton_shared_memory_are_the_user_s_alone(tls_stack: Stack) -> None:
    logs = tls_stack.run_dir / "logs"
    assert tls_stack.run_dir.stat().st_mode & 0o077 == 0
    assert logs.stat().st_mode & 0o077 == 0
    files = list(logs.glob("*.log"))
    assert len(files) >= 5 and all(f.stat().st_mode & 0o077 == 0 for f in files)
    regions = {
        Path(line.split(maxsplit=5)[5].removesuffix(" (deleted)"))
        for pid in _process_tree(tls_stack.pids["tritonserver"])
        for line in _maps(pid)
        if "/dev/shm/" in line
    }
    assert regions, "the python backend maps shared-memory regions"
    assert all(r.stat().st_mode & 0o077 == 0 for r in regions if r.exists()), [
        (r, oct(r.stat().st_mode)) for r in regions if r.exists()
    ]


def _maps(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return []


def test_documents_come_over_mtls_with_a_key_and_identity_stays_out_of_logs_and_fhir(
    tls_stack: Stack, pki: DevPki
) -> None:
    """The DICOM documents copy the patient module (a PACS files them by it: the caller sent
    it and gets it back in its own study); the FHIR report, the logs and the audit trail carry
    none of it."""
    import pydicom
    from synthetic import PATIENT_ID, PATIENT_NAME

    client = GatewayClient(tls_stack.gateway_address, files=_client_files(pki), api_key=API_KEY)
    response = client.analyze(
        _study(), client_request_id="tls-documents", documents=("sr", "heatmap", "fhir")
    )
    client.close()
    kinds = {o.kind: o for o in response.outputs}
    assert set(kinds) == {"dicom_sr", "dicom_heatmap", "fhir"}
    sr = pydicom.dcmread(BytesIO(kinds["dicom_sr"].data))
    assert (str(sr.PatientName), sr.PatientID, sr.StudyInstanceUID) == (
        PATIENT_NAME,
        PATIENT_ID,
        STUDY_UID,
    )
    fhir = kinds["fhir"].data.decode()
    assert "SECRET" not in fhir and PATIENT_ID not in fhir
    for text in [*Path(tls_stack.run_dir, "logs").glob("*.log"), tls_stack.audit_log]:
        content = text.read_text(errors="replace")
        assert "SECRET" not in content and PATIENT_ID not in content, text.name
    anonymous = GatewayClient(tls_stack.gateway_address, files=_client_files(pki))
    with pytest.raises(grpc.RpcError) as refused:
        anonymous.analyze(_study(), documents=("sr",))
    anonymous.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
