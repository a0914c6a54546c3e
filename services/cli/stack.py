"""Start and stop the local stack: a real tritonserver plus the four gRPC services.

Processes run in their own sessions so that ``up`` can return while they keep serving;
``down`` (or Stack.stop) sends SIGTERM for a graceful drain, then SIGKILL after a grace
period. Nothing here fakes a component: the local Triton is the bundled CPU build.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.natsserver import NatsError, NatsServer
from services.cli.pki import INGEST_CLIENT_NAME, INTERNAL_COMMON_NAME, DevPki, common_name
from services.common.listeners import DATA_PLANE, LISTENERS, NATS, TRITON, Service
from services.common.settings import DEFAULT_MODEL_REPOSITORY, ServiceSettings
from services.common.tls import channel_credentials
from services.common.tls_files import TlsFiles
from services.triton_local.launch import TritonLaunchError, connection_flags, start_tritonserver

REPO_ROOT = Path(__file__).resolve().parents[2]
# The connection policy every server of the stack shares, Triton included (defaults, unread
# from the environment: the stack's own processes get theirs from IMAGING_*).
_SERVICE_DEFAULTS = ServiceSettings.model_construct()
# Start order: the gateway dials the others (the ingest, when asked for, comes after it).
SERVICES = DATA_PLANE


def free_port() -> int:
    """A port free a moment ago. Another process may take it before it is bound again: only
    for tritonserver, which cannot bind port 0 and report it; the stack retries its start on
    new ports when one was taken."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# tritonserver's words when one of its ports is taken (it then exits: --exit-on-error).
_TRITON_PORT_TAKEN = "already in use"
TRITON_START_ATTEMPTS = 3


@dataclass
class Ports:
    """Every port of the stack; ``Ports.free()`` lets each service bind any free one (tests,
    demo). A service port of 0 means "any free one": the service binds port 0 and reports
    the port it got (IMAGING_PORTS_FILE), and the stack records it in stack.json."""

    triton_http: int = TRITON.http
    triton_grpc: int = TRITON.grpc
    triton_metrics: int = TRITON.metrics
    gateway: int = LISTENERS[Service.GATEWAY].grpc
    decoder: int = LISTENERS[Service.DECODER].grpc
    preprocessor: int = LISTENERS[Service.PREPROCESSOR].grpc
    postprocessor: int = LISTENERS[Service.POSTPROCESSOR].grpc
    # Of the services the stack runs: the data plane, and the ingest once a Stack asks for it
    # (Stack.__post_init__), so that whoever walks these dicts meets only listening ports.
    metrics: dict[str, int] = field(
        default_factory=lambda: {s.value: LISTENERS[s].metrics for s in DATA_PLANE}
    )
    # Plaintext grpc.health.v1 of each service (used when the API ports serve TLS only).
    health: dict[str, int] = field(
        default_factory=lambda: {s.value: LISTENERS[s].health for s in DATA_PLANE}
    )
    ingest: int = LISTENERS[Service.INGEST].grpc
    dimse: int = LISTENERS[Service.INGEST].dimse or 0
    nats: int = NATS.client
    nats_monitoring: int = NATS.monitoring

    # Triton's ports were picked (free_port), not chosen: on a taken one, pick again.
    triton_picked: bool = False

    @classmethod
    def free(cls) -> Ports:
        """Services: port 0 (bound, then reported). Triton cannot report a port it bound, so
        its three are picked here and its start retried with new ones if one was taken."""
        ports = cls(
            0, 0, 0, 0, 0, 0, 0, dict.fromkeys(DATA_PLANE, 0), dict.fromkeys(DATA_PLANE, 0),
            0, 0, 0, 0,
        )  # fmt: skip
        ports.pick_triton()
        return ports

    def pick_triton(self) -> None:
        self.triton_http, self.triton_grpc, self.triton_metrics = (
            free_port(),
            free_port(),
            free_port(),
        )
        self.triton_picked = True

    def grpc(self, service: str) -> int:
        return int(getattr(self, service))


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    run_dir: Path
    ports: Ports = field(default_factory=Ports)
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    pipelines_dir: Path = REPO_ROOT / "pipelines"
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    # Which platform services to run beside tritonserver (benchmarks of Triton alone use none).
    services: tuple[str, ...] = SERVICES
    pids: dict[str, int] = field(default_factory=dict)
    # Certificate, key and CA of every API port, Triton's gRPC included (mutual TLS with a CA);
    # default: IMAGING_TLS_CERT / IMAGING_TLS_KEY / IMAGING_TLS_CA of this process.
    tls: TlsFiles = field(
        default_factory=lambda: TlsFiles(
            *(
                Path(os.environ[v]) if os.environ.get(v) else None
                for v in ("IMAGING_TLS_CERT", "IMAGING_TLS_KEY", "IMAGING_TLS_CA")
            )
        )
    )
    # The services' own trust domain (inner services, Triton, and what the gateway dials
    # them with); None: the files above. ``allowed_peers``: the identity inner services accept.
    internal_tls: TlsFiles | None = None
    allowed_peers: str = ""
    # The DICOM ingest (services/ingest) and its NATS server beside the data plane (`up`,
    # the demo and the ingest tests; most tests need neither).
    ingest: bool = False
    # A client pair of the gateway's CA for the ingest's worker, and who may call the ingest's
    # studies API (use_dev_pki sets both).
    client_tls: TlsFiles | None = None
    studies_readers: str = ""
    # More addresses behind a service's name, as a headless Service has several replicas:
    # the gateway dials ``ipv4:`` the stack's own and these (tests of draining replicas).
    replicas: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ingest and Service.INGEST not in self.ports.metrics:
            picked = self.ports.gateway == 0  # Ports.free(): every service binds any port
            listeners = LISTENERS[Service.INGEST]
            self.ports.metrics[Service.INGEST] = 0 if picked else listeners.metrics
            self.ports.health[Service.INGEST] = 0 if picked else listeners.health

    def use_dev_pki(self, pki: DevPki) -> None:
        """Edge certificates for the gateway's public port, internal ones behind it."""
        self.tls = TlsFiles(pki.server_cert, pki.server_key, pki.ca_cert)
        self.internal_tls = TlsFiles(pki.internal_cert, pki.internal_key, pki.internal_ca_cert)
        self.allowed_peers = INTERNAL_COMMON_NAME
        self.client_tls = TlsFiles(pki.ingest_client_cert, pki.ingest_client_key, pki.ca_cert)
        # The studies API answers the CLI's certificate, not every certificate the edge CA
        # signed (a modality's DICOM client certificate among them).
        self.studies_readers = common_name(pki.client_cert.read_bytes())

    @property
    def inner_tls(self) -> TlsFiles:
        return self.internal_tls if self.internal_tls is not None else self.tls

    @property
    def pixel_exchange_dir(self) -> Path:
        """Where the decoder leaves decoded pixels for the preprocessor: shared memory when the
        machine has it (the services run side by side here)."""
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.run_dir
        return base / f"imaging-exchange-{self.tag}"

    @property
    def tag(self) -> str:
        """A name of this stack that is known before any port is bound: its run dir's."""
        return hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:12]

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.ports.gateway}"

    @property
    def triton_grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports.triton_grpc}"

    def _log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with _private_log(self._log(name)) as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.run_dir,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )
        self.pids[name] = process.pid
        self._save_state()

    def _start_triton(self) -> None:
        flags = [
            # Loopback only, like the services: tritonserver binds every interface by default.
            "--http-address=127.0.0.1",
            f"--http-port={self.ports.triton_http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.ports.triton_grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.ports.triton_metrics}",
            "--exit-on-error=true",
            *connection_flags(
                _SERVICE_DEFAULTS.max_connection_age_seconds,
                _SERVICE_DEFAULTS.max_connection_age_grace_seconds,
                _SERVICE_DEFAULTS.min_ping_interval_seconds,
            ),
            *self._triton_tls_flags(),
        ]
        try:
            process, _ = start_tritonserver(
                self.run_dir / "triton", self.model_repository, flags, self._log("tritonserver")
            )
        except TritonLaunchError as err:
            raise StackError(str(err)) from err
        self.pids["tritonserver"] = process.pid
        self._save_state()

    @property
    def audit_log(self) -> Path:
        return self.run_dir / "logs" / "audit.jsonl"

    @property
    def audit_key_file(self) -> Path:
        return self.run_dir / "audit-key"

    def _secret(self, path: Path) -> str:
        """A random secret in a 0600 file of the run dir, made once."""
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_hex(32))
        return path.read_text().strip()

    def _triton_tls_flags(self) -> list[str]:
        """With TLS: gRPC mutual TLS with the internal CA, so only the services' certificate
        gets in (no client of the gateway), and no HTTP endpoint at all. Triton's HTTP has no
        TLS, and its restricted APIs take a key only on the command line, where any local
        user reads it (/proc/PID/cmdline): so the local stack has no admin key and runs with
        model control off, and the chart keeps the key for its pods (README "Security")."""
        files = self.inner_tls
        if not files.serves_tls:
            return []
        flags = [
            "--allow-http=false",
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={files.cert}",
            f"--grpc-server-key={files.key}",
        ]
        if files.ca is not None:
            flags += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={files.ca}"]
        return flags

    def restart_triton(self, timeout: float = 120.0) -> None:
        """Start tritonserver again after it died (fault tests, load_tests/faults.py)."""
        old = self.pids.pop("tritonserver", None)
        if old is not None and _signal(old, signal.SIGKILL):
            _wait_exit(old, 10)
        self._start_triton()
        self._wait_for_triton(timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one process of the stack and wait for it to exit (fault and probe tests)."""
        pid = self.pids.pop(name, None)
        if pid is not None and _signal(pid, sig):
            _wait_exit(pid, 30)
        self._save_state()

    def start_service(self, service: str) -> None:
        """Start one platform service (again) without waiting for it to be ready."""
        self._ports_file(service).unlink(missing_ok=True)  # a stale one would be believed
        argv = [sys.executable, "-m", f"services.{service}.server"]
        self._spawn(service, argv, self._service_env(service))

    def _ports_file(self, service: str) -> Path:
        return self.run_dir / "ports" / f"{service}.json"

    def _await_ports(self, services: list[str], timeout: float) -> None:
        """Record the ports each service bound, once it has written them (polled until a
        deadline; a service that exits meanwhile fails the start with its log)."""
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            self._check_alive()
            for service in list(pending):
                path = self._ports_file(service)
                if not path.exists():
                    continue
                bound = json.loads(path.read_text())
                setattr(self.ports, service, int(bound["port"]))
                self.ports.metrics[service] = int(bound["metrics_port"])
                self.ports.health[service] = int(bound["health_port"])
                if "dimse_port" in bound:
                    self.ports.dimse = int(bound["dimse_port"])
                pending.remove(service)
            if pending and time.monotonic() > deadline:
                raise StackError(f"no ports reported after {timeout:.0f} s: {pending}")
            if pending:
                time.sleep(0.1)
        self._save_state()

    def _wait_for_triton(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._triton_ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"tritonserver not ready after {timeout:.0f} s")
            time.sleep(0.25)
        self._private_shared_memory()

    def _private_shared_memory(self) -> None:
        """Triton's python backend creates its shared-memory regions 0644 whatever the umask
        (boost.interprocess sets the mode): tighten those its processes map to 0600 once the
        models are loaded (with model control off, no region is made later unless a stub is
        restarted)."""
        pid = self.pids.get("tritonserver")
        if pid is None:
            return
        for path in _shared_memory_of(pid):
            try:
                if path.stat().st_uid == os.getuid():
                    os.chmod(path, 0o600)
            except OSError:
                continue  # gone meanwhile

    def _service_env(self, service: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            IMAGING_HOST="127.0.0.1",
            IMAGING_PORT=str(self.ports.grpc(service)),
            IMAGING_METRICS_PORT=str(self.ports.metrics[service]),
            IMAGING_PIPELINES_DIR=str(self.pipelines_dir),
            IMAGING_LOG_LEVEL=self.log_level,
            IMAGING_DECODER_ADDRESS=self._peer_address(Service.DECODER),
            IMAGING_PREPROCESSOR_ADDRESS=self._peer_address(Service.PREPROCESSOR),
            IMAGING_POSTPROCESSOR_ADDRESS=self._peer_address(Service.POSTPROCESSOR),
            IMAGING_TRITON_ADDRESS=self.triton_grpc_address,
            IMAGING_PIXEL_EXCHANGE_DIR=str(self.pixel_exchange_dir),
            # A health port is always served here; 0 (any free one) is -1 to the service.
            IMAGING_HEALTH_PORT=str(self.ports.health[service] or -1),
            IMAGING_PORTS_FILE=str(self._ports_file(service)),
        )
        # The ingest faces DICOM peers as the gateway faces clients: the edge certificates.
        files = self.tls if service in (Service.GATEWAY, Service.INGEST) else self.inner_tls
        if service == Service.GATEWAY and self.internal_tls is not None:
            internal = self.internal_tls
            for part, path in (("CERT", internal.cert), ("KEY", internal.key), ("CA", internal.ca)):
                if path is not None:
                    env[f"IMAGING_PEER_TLS_{part}"] = str(path)
        if service not in (Service.GATEWAY, Service.INGEST) and self.allowed_peers:
            env["IMAGING_ALLOWED_PEERS"] = self.allowed_peers
        if service == Service.INGEST:
            self._ingest_env(env)
        if service == Service.GATEWAY:
            self._secret(self.audit_key_file)
            env.update(
                IMAGING_AUDIT_LOG=str(self.audit_log),
                IMAGING_AUDIT_KEY_FILE=str(self.audit_key_file),
                IMAGING_AUDIT_CHAIN=f"gateway-{self.tag}",
            )
        for name, path in (
            ("IMAGING_TLS_CERT", files.cert),
            ("IMAGING_TLS_KEY", files.key),
            ("IMAGING_TLS_CA", files.ca),
        ):
            if path is None:
                env.pop(name, None)
            else:
                env[name] = str(path)
        env.update(self.extra_env)
        if service == Service.GATEWAY and self.ingest:  # after: it extends the user's files
            self._gateway_access(env)
        return env

    def _peer_address(self, service: str) -> str:
        own = f"127.0.0.1:{self.ports.grpc(service)}"
        more = self.replicas.get(service, [])
        return f"ipv4:{','.join([own, *more])}" if more else own

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    def _save_state(self) -> None:
        """The processes started so far, their ports and TLS files: written at every spawn,
        so that `down` and `status` find even those of a start that failed half way."""
        tls = {
            "tls": [str(p) if p else None for p in (self.tls.cert, self.tls.key, self.tls.ca)],
            "internal_tls": (
                None
                if self.internal_tls is None
                else [
                    str(p) if p else None
                    for p in (self.internal_tls.cert, self.internal_tls.key, self.internal_tls.ca)
                ]
            ),
        }
        state = {"pids": self.pids, "ports": asdict(self.ports), **tls}
        self.state_file.write_text(json.dumps(state, indent=2))

    def running(self) -> dict[str, int]:
        """The processes a stack recorded in this run dir that are still alive."""
        if not self.state_file.exists():
            return {}
        recorded = json.loads(self.state_file.read_text()).get("pids", {})
        return {name: int(pid) for name, pid in recorded.items() if _alive(int(pid))}

    def refuse_to_disturb(self) -> None:
        """Another stack's run dir or ports: refuse before touching any file or process."""
        alive = self.running()
        if alive:
            listed = ", ".join(f"{name} (pid {pid})" for name, pid in sorted(alive.items()))
            raise StackError(
                f"a stack is already running from {self.run_dir}: {listed}; "
                f"stop it first with `imaging-platform --run-dir {self.run_dir} down`"
            )
        busy = sorted(
            {
                name: port
                for name, port in self._all_ports().items()
                if port and _listening(port)  # 0: any free port, bound later
            }.items()
        )
        if busy:
            listed = ", ".join(f"{port} ({name})" for name, port in busy)
            raise StackError(
                f"port(s) {listed} on 127.0.0.1 are in use (another stack or program); stop it "
                "or start this one with another run dir and ports"
            )

    def _all_ports(self) -> dict[str, int]:
        ports = {
            "triton http": self.ports.triton_http,
            "triton grpc": self.ports.triton_grpc,
            "triton metrics": self.ports.triton_metrics,
        }
        for service in [*self.services, *([Service.INGEST] if self.ingest else [])]:
            ports[service] = self.ports.grpc(service)
            ports[f"{service} metrics"] = self.ports.metrics[service]
            ports[f"{service} health"] = self.ports.health[service]
        if self.ingest:
            ports.update(
                {
                    "ingest dicom": self.ports.dimse,
                    "nats": self.ports.nats,
                    "nats monitoring": self.ports.nats_monitoring,
                }
            )
        return ports

    @property
    def nats_home(self) -> Path:
        return self.run_dir / "nats"

    @property
    def spool_dir(self) -> Path:
        return self.run_dir / "ingest"

    @property
    def ingest_address(self) -> str:
        return f"127.0.0.1:{self.ports.ingest}"

    def start_nats(self, timeout: float = 30.0) -> None:
        """Start (or restart, on the same store and ports) the NATS server."""
        server = NatsServer(
            self.nats_home, self.ports.nats, self.ports.nats_monitoring, self._log("nats-server")
        )
        try:
            server.start(timeout)
        except NatsError as err:
            raise StackError(str(err)) from err
        self.pids["nats-server"] = server.pid
        self.ports.nats = server.bound["client"]
        self.ports.nats_monitoring = server.bound["monitoring"]
        self._save_state()

    def start_ingest(self, timeout: float = 60.0) -> None:
        """Start the ingest (again: the durability tests kill it) and wait until it serves."""
        self.start_service(Service.INGEST)
        self._await_ports([Service.INGEST], timeout)
        deadline = time.monotonic() + timeout
        while not self.serving(Service.INGEST):
            self._check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"ingest not ready after {timeout:.0f} s")
            time.sleep(0.1)

    def _ingest_env(self, env: dict[str, str]) -> None:
        """The ingest's files, its NATS server, and how its worker calls the gateway: with a
        client pair of the gateway's CA under TLS, with its own API key where keys are
        required, and allowed (client policy) to assert the DICOM caller as the origin."""
        self.spool_dir.mkdir(mode=0o700, exist_ok=True)
        env.update(
            IMAGING_SPOOL_DIR=str(self.spool_dir),
            IMAGING_NATS_URL=f"nats://127.0.0.1:{self.ports.nats}",
            IMAGING_NATS_MONITORING_URL=f"http://127.0.0.1:{self.ports.nats_monitoring}",
            IMAGING_DIMSE_PORT=str(self.ports.dimse),
            IMAGING_GATEWAY_ADDRESS=self.gateway_address,
            IMAGING_AUDIT_LOG=str(self.audit_log),
            IMAGING_AUDIT_KEY_FILE=str(self.audit_key_file),
            IMAGING_AUDIT_CHAIN=f"ingest-{self.tag}",
        )
        if self.client_tls is not None:
            for part, path in (
                ("CERT", self.client_tls.cert),
                ("KEY", self.client_tls.key),
                ("CA", self.client_tls.ca),
            ):
                env[f"IMAGING_GATEWAY_TLS_{part}"] = str(path)
        if self.studies_readers:
            env["IMAGING_ALLOWED_PEERS"] = self.studies_readers
        if self._gateway_keys() is not None:
            env["IMAGING_GATEWAY_API_KEY_FILE"] = str(self.run_dir / "ingest-api-key")

    def _gateway_keys(self) -> Path | None:
        value = self.extra_env.get("IMAGING_API_KEYS_FILE") or os.environ.get(
            "IMAGING_API_KEYS_FILE"
        )
        return Path(value) if value else None

    def _ingest_identity(self) -> str:
        """The name the gateway knows the ingest's worker by."""
        if self._gateway_keys() is not None:
            return INGEST_CLIENT
        if self.client_tls is not None and self.client_tls.cert is not None:
            return common_name(self.client_tls.cert.read_bytes())
        return ""  # a gateway without authentication: every caller is anonymous

    def _gateway_access(self, env: dict[str, str]) -> None:
        """The gateway's keys and policy files, with the ingest's worker added to the ones the
        user gave (or to an allow-everyone policy when none)."""
        keys = self._gateway_keys()
        if keys is not None:
            secret = self._secret(self.run_dir / "ingest-api-key")
            digest = hashlib.sha256(secret.encode()).hexdigest()
            merged = self.run_dir / "api-keys"
            merged.write_text(keys.read_text().rstrip("\n") + f"\n{INGEST_CLIENT} {digest}\n")
            os.chmod(merged, 0o600)
            env["IMAGING_API_KEYS_FILE"] = str(merged)
        given = self.extra_env.get("IMAGING_CLIENT_POLICY_FILE") or os.environ.get(
            "IMAGING_CLIENT_POLICY_FILE"
        )
        policy = (yaml.safe_load(Path(given).read_text()) or {}) if given else {"*": {}}
        name = self._ingest_identity()
        policy[name] = {**(policy.get(name) or {}), "assert_origin": True}
        target = self.run_dir / "client-policy.yaml"
        target.write_text(yaml.safe_dump(policy))
        env["IMAGING_CLIENT_POLICY_FILE"] = str(target)

    def start(self, timeout: float = 180.0) -> None:
        self.refuse_to_disturb()
        # Logs, secrets and state are the stack's user's alone (0700 folders, 0600 files).
        for folder in (self.run_dir, self.run_dir / "logs", self.run_dir / "ports"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        self.pixel_exchange_dir.mkdir(mode=0o700, exist_ok=True)
        try:
            # Triton first: the gateway reports NOT_SERVING while it cannot reach it.
            self._start_triton_until_bound(timeout)
            # The gateway last: it dials the inner services at the ports they reported.
            inner = [s for s in self.services if s != Service.GATEWAY]
            for service in inner:
                self.start_service(service)
            self._await_ports(inner, timeout)
            if self.ingest:
                self.start_nats()
            if Service.GATEWAY in self.services:
                self.start_service(Service.GATEWAY)
                self._await_ports([Service.GATEWAY], timeout)
            self.wait_ready(timeout)
            if self.ingest:
                self.start_ingest(timeout)
        except BaseException:
            self.stop()
            raise
        self._save_state()

    def _start_triton_until_bound(self, timeout: float) -> None:
        """Start Triton and wait for it; if its ports were picked and one was taken before it
        bound them (it exits saying so), pick new ones and start it again."""
        for attempt in range(1, TRITON_START_ATTEMPTS + 1):
            self._start_triton()
            try:
                self._wait_for_triton(timeout)
                return
            except StackError as err:
                taken = _TRITON_PORT_TAKEN in str(err)
                if not (self.ports.triton_picked and taken) or attempt == TRITON_START_ATTEMPTS:
                    raise
            pid = self.pids.pop("tritonserver")
            if _signal(pid, signal.SIGKILL):
                _wait_exit(pid, 10)
            _wait_group_exit(pid, 30)  # its backend stubs hold files the next start replaces
            self.ports.pick_triton()
            self._save_state()

    def _check_alive(self) -> None:
        for name, pid in self.pids.items():
            try:
                finished, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # not our child (stack started by another `up`)
            if finished:
                tail = self._log(name).read_text(errors="replace")[-3000:]
                raise StackError(f"{name} exited with status {status} during start-up:\n{tail}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {"tritonserver", *self.services}
        while pending:
            self._check_alive()
            if "tritonserver" in pending and self._triton_ready():
                pending.discard("tritonserver")
            for service in [s for s in self.services if s in pending]:
                if self._grpc_serving(self.ports.health[service]):
                    pending.discard(service)
            if pending and time.monotonic() > deadline:
                raise StackError(f"not ready after {timeout:.0f} s: {sorted(pending)}")
            if pending:
                time.sleep(0.25)

    def triton_ready(self) -> bool:
        return self._triton_ready()

    def serving(self, service: str) -> bool:
        """The service's own health (grpc.health.v1 on its plaintext health port)."""
        return self._grpc_serving(self.ports.health[service])

    def _triton_ready(self) -> bool:
        """HTTP ready and the gRPC port accepting (it can open after the HTTP one); with TLS
        (no HTTP) gRPC ServerReady over the services' own mutual TLS."""
        if self.inner_tls.serves_tls:
            return self._triton_ready_over_tls()
        url = f"http://127.0.0.1:{self.ports.triton_http}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status != 200:
                    return False
            with socket.create_connection(("127.0.0.1", self.ports.triton_grpc), timeout=1):
                return True
        except OSError:
            return False

    def _triton_ready_over_tls(self) -> bool:
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        credentials = channel_credentials(self.inner_tls)
        with grpc.secure_channel(self.triton_grpc_address, credentials) as channel:
            try:
                reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                    service_pb2.ServerReadyRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
            return bool(reply.ready)

    @staticmethod
    def _grpc_serving(port: int) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1
                )
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM everything (gateway first so no new work enters), then SIGKILL stragglers."""
        order = [
            Service.INGEST,
            Service.GATEWAY,
            Service.DECODER,
            Service.PREPROCESSOR,
            Service.POSTPROCESSOR,
            "tritonserver",
            "nats-server",
        ]
        alive = {n: p for n, p in self.pids.items() if _signal(p, signal.SIGTERM)}
        for name in order:
            if name in alive:
                _wait_exit(alive[name], grace)
        for pid in alive.values():
            _signal(pid, signal.SIGKILL)
            _wait_exit(pid, 5)
        self.pids.clear()
        (self.run_dir / "stack.json").unlink(missing_ok=True)
        shutil.rmtree(self.pixel_exchange_dir, ignore_errors=True)

    @classmethod
    def from_state(cls, run_dir: Path) -> Stack:
        state = json.loads((run_dir / "stack.json").read_text())

        def files(paths: list[str | None] | None) -> TlsFiles | None:
            if paths is None:
                return None
            return TlsFiles(*(Path(p) if p else None for p in paths))

        stack = cls(run_dir=run_dir, ports=Ports(**state["ports"]), pids=state["pids"])
        stack.tls = files(state.get("tls")) or TlsFiles()
        stack.internal_tls = files(state.get("internal_tls"))
        return stack


# The gateway's name for the ingest's worker when API keys are required (its key is minted in
# the run dir and added to the keys file the gateway reads), as in its dev certificate.
INGEST_CLIENT = INGEST_CLIENT_NAME

# Files the stack's processes create (logs, Triton's shared-memory regions, the pixel
# exchange) are their user's alone.
PRIVATE_UMASK = 0o077


@contextmanager
def _private_log(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for appending, created 0600 (a log may name a failing file)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        yield log


def _shared_memory_of(root: int) -> set[Path]:
    """The /dev/shm files mapped by ``root`` and its descendants (the backend stubs)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            number, rest = stat.read_text().split(" (", 1)
            parents[int(number)] = int(rest.rsplit(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree = {root}
    grown = True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grown = bool(found)
    regions: set[Path] = set()
    for pid in tree:
        try:
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                regions.add(Path(fields[5].removesuffix(" (deleted)")))
    return regions


def _alive(pid: int) -> bool:
    """A process with this pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1].split()[0] != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _signal(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_group_exit(pgid: int, timeout: float) -> None:
    """Until every process of the group (a tritonserver and its backend stubs) is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _wait_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
