"""Start and stop the local stack: a real tritonserver plus the four gRPC services.

Processes run in their own sessions so that ``up`` can return while they keep serving;
``down`` (or Stack.stop) sends SIGTERM for a graceful drain, then SIGKILL after a grace
period. Nothing here fakes a component: the local Triton is the bundled CPU build.
"""

from __future__ import annotations

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import TlsFiles
from services.triton_local.launch import TritonLaunchError, start_tritonserver

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("decoder", "preprocessor", "postprocessor", "gateway")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ports:
    """Every port of the stack; ``Ports.free()`` picks unused ones (tests, demo)."""

    triton_http: int = 8000
    triton_grpc: int = 8001
    triton_metrics: int = 8002
    gateway: int = 50051
    decoder: int = 50052
    preprocessor: int = 50053
    postprocessor: int = 50054
    metrics: dict[str, int] = field(
        default_factory=lambda: {
            "gateway": 9101,
            "decoder": 9102,
            "preprocessor": 9103,
            "postprocessor": 9104,
        }
    )
    # Plaintext grpc.health.v1 of each service (used when the API ports serve TLS only).
    health: dict[str, int] = field(
        default_factory=lambda: {
            "gateway": 9201,
            "decoder": 9202,
            "preprocessor": 9203,
            "postprocessor": 9204,
        }
    )

    @classmethod
    def free(cls) -> Ports:
        return cls(
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            {name: free_port() for name in SERVICES},
            {name: free_port() for name in SERVICES},
        )

    def grpc(self, service: str) -> int:
        return int(getattr(self, service))


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    run_dir: Path
    ports: Ports = field(default_factory=Ports)
    model_repository: Path = REPO_ROOT / "model_repository"
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

    @property
    def pixel_exchange_dir(self) -> Path:
        """Where the decoder leaves decoded pixels for the preprocessor: shared memory when the
        machine has it (the services run side by side here)."""
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.run_dir
        return base / f"imaging-exchange-{self.ports.decoder}"

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.ports.gateway}"

    @property
    def triton_grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports.triton_grpc}"

    def _log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = self._log(name).open("ab")
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.run_dir,
            start_new_session=True,
        )
        self.pids[name] = process.pid

    def _start_triton(self) -> None:
        flags = [
            f"--http-port={self.ports.triton_http}",
            f"--grpc-port={self.ports.triton_grpc}",
            f"--metrics-port={self.ports.triton_metrics}",
            "--exit-on-error=true",
            *self._triton_tls_flags(),
        ]
        try:
            process, _ = start_tritonserver(
                self.run_dir / "triton", self.model_repository, flags, self._log("tritonserver")
            )
        except TritonLaunchError as err:
            raise StackError(str(err)) from err
        self.pids["tritonserver"] = process.pid

    @property
    def triton_admin_key_file(self) -> Path:
        return self.run_dir / "triton-admin-key"

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
        """With TLS: gRPC mutual TLS only; model control, shared memory, statistics, trace and
        logging need the admin key on both endpoints (HTTP stays plaintext for health)."""
        files = self.tls
        if not files.serves_tls:
            return []
        admin = f"admin-key={self._secret(self.triton_admin_key_file)}"
        restricted = "model-repository,shared-memory,statistics,trace,logging"
        flags = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={files.cert}",
            f"--grpc-server-key={files.key}",
            f"--grpc-restricted-protocol={restricted}:{admin}",
            f"--http-restricted-api={restricted}:{admin}",
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

    def _wait_for_triton(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._triton_ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"tritonserver not ready after {timeout:.0f} s")
            time.sleep(0.25)

    def _service_env(self, service: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            IMAGING_HOST="127.0.0.1",
            IMAGING_PORT=str(self.ports.grpc(service)),
            IMAGING_METRICS_PORT=str(self.ports.metrics[service]),
            IMAGING_PIPELINES_DIR=str(self.pipelines_dir),
            IMAGING_LOG_LEVEL=self.log_level,
            IMAGING_DECODER_ADDRESS=f"127.0.0.1:{self.ports.decoder}",
            IMAGING_PREPROCESSOR_ADDRESS=f"127.0.0.1:{self.ports.preprocessor}",
            IMAGING_POSTPROCESSOR_ADDRESS=f"127.0.0.1:{self.ports.postprocessor}",
            IMAGING_TRITON_ADDRESS=self.triton_grpc_address,
            IMAGING_PIXEL_EXCHANGE_DIR=str(self.pixel_exchange_dir),
            IMAGING_HEALTH_PORT=str(self.ports.health[service]),
        )
        if service == "gateway":
            self._secret(self.audit_key_file)
            env.update(
                IMAGING_AUDIT_LOG=str(self.audit_log),
                IMAGING_AUDIT_KEY_FILE=str(self.audit_key_file),
                IMAGING_AUDIT_CHAIN=f"gateway-{self.ports.gateway}",
            )
        for name, path in (
            ("IMAGING_TLS_CERT", self.tls.cert),
            ("IMAGING_TLS_KEY", self.tls.key),
            ("IMAGING_TLS_CA", self.tls.ca),
        ):
            if path is None:
                env.pop(name, None)
            else:
                env[name] = str(path)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 180.0) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.pixel_exchange_dir.mkdir(mode=0o700, exist_ok=True)
        try:
            self._start_triton()
            # Triton first: the gateway reports NOT_SERVING while it cannot reach it.
            self._wait_for_triton(timeout)
            for service in self.services:
                argv = [sys.executable, "-m", f"services.{service}.server"]
                self._spawn(service, argv, self._service_env(service))
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        (self.run_dir / "stack.json").write_text(
            json.dumps({"pids": self.pids, "ports": asdict(self.ports)}, indent=2)
        )

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

    def _triton_ready(self) -> bool:
        """HTTP ready and the gRPC port accepting (it can open after the HTTP one)."""
        url = f"http://127.0.0.1:{self.ports.triton_http}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status != 200:
                    return False
            with socket.create_connection(("127.0.0.1", self.ports.triton_grpc), timeout=1):
                return True
        except OSError:
            return False

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
        order = ["gateway", "decoder", "preprocessor", "postprocessor", "tritonserver"]
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
        return cls(run_dir=run_dir, ports=Ports(**state["ports"]), pids=state["pids"])


def _signal(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False


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
