"""The README's Kubernetes walk-through, its client call run against a local twin of the scenario.

The walk-through installs ``ci/entry-tls-values.yaml``: a GRPCRoute on a Gateway that ends the
callers' TLS and re-encrypts to the gateway with a client certificate of the gateway's CA, API
keys, no reflection. Here the same configuration runs on loopback: the gateway gets the
settings the chart renders into its container (reflection, admission, limits), mutual TLS and
an API-keys file; nginx (a real HTTP/2 proxy, standing in for the cluster's Gateway
implementation, which cannot run here) is the entry, configured from the rendered route: it
serves the route's host name with a certificate of its own CA, routes only the route's gRPC
service, and re-encrypts with a client certificate of the gateway's CA, checking the gateway's
certificate as the BackendTLSPolicy says. The README's client block then runs as written, with
only the entry's address, CA file and key in the environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from conftest import REPO_ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ports import for_attempt, pick_port, start_all

from services.cli.chart import render
from services.cli.pki import DevPki, create_dev_pki
from services.cli.stack import Ports, Stack

pytestmark = pytest.mark.integration

SCENARIO = REPO_ROOT / "helm" / "imaging-platform" / "ci" / "entry-tls-values.yaml"
README = REPO_ROOT / "README.md"
MARKER = "<!-- entry-client -->"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # Debian installs it outside a user's PATH
CLIENT = "reading-room"
API_KEY = "key-of-the-reading-room-behind-the-entry"
# Settings the chart renders that are about where things are (ports, files, peers), which the
# local stack sets itself; every other IMAGING_* value of the gateway container is carried over.
LOCAL = re.compile(r"IMAGING_(HOST|PORT|.*_PORT|.*_ADDRESS|.*_FILE|.*_DIR|.*TLS_.*|ALLOWED_PEERS)$")


@dataclass(frozen=True)
class Scenario:
    gateway_env: dict[str, str]
    route: dict[str, Any]
    backend_tls: dict[str, Any]


def _objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    objs = _objects(render([SCENARIO], "imaging", "imaging"))
    (route,) = [o for o in objs if o["kind"] == "GRPCRoute"]
    (policy,) = [o for o in objs if o["kind"] == "BackendTLSPolicy"]
    (deploy,) = [
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway")
    ]
    (container,) = [
        c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"
    ]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return Scenario(env, route, policy)


def test_the_scenario_is_the_secure_one_the_readme_describes(scenario: Scenario) -> None:
    """What the twin below must reproduce: keys, no reflection, TLS, one routed service."""
    env = scenario.gateway_env
    assert env["IMAGING_REFLECTION"] == "false"
    assert env["IMAGING_API_KEYS_FILE"] and env["IMAGING_TLS_CA"]
    (rule,) = scenario.route["spec"]["rules"]
    assert [m["method"]["service"] for m in rule["matches"]] == ["imaging.v1.Gateway"]
    text = README.read_text()
    assert SCENARIO.relative_to(REPO_ROOT).as_posix().replace("helm/imaging-platform/", "") in text
    assert text.count(MARKER) == 1


def _carried_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("IMAGING_") and not LOCAL.match(k)}


@pytest.fixture(scope="module")
def pki(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """The gateway's certificate carries the name the BackendTLSPolicy checks, as the chart's
    cert-manager Certificate does; the client pair stands for the entry's client certificate
    (the gateway CA's)."""
    hosts = (scenario.backend_tls["spec"]["validation"]["hostname"], "localhost", "127.0.0.1")
    return create_dev_pki(tmp_path_factory.mktemp("pki"), hosts=hosts)


@pytest.fixture(scope="module")
def stack(
    scenario: Scenario, pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("entry-stack")
    keys = run_dir / "api-keys"
    keys.write_text(f"{CLIENT} {hashlib.sha256(API_KEY.encode()).hexdigest()}\n")
    env = _carried_settings(scenario.gateway_env) | {"IMAGING_API_KEYS_FILE": str(keys)}
    stack = Stack(run_dir=run_dir, ports=Ports.free(), extra_env=env)
    stack.use_dev_pki(pki)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@dataclass(frozen=True)
class Entry:
    address: str
    ca: Path


def _seconds(env: dict[str, str], *names: str) -> int:
    return sum(int(float(env[name])) for name in names)


class NginxEntry:
    """nginx as the Gateway's listener and the route, for ports.start_all (nginx cannot bind
    port 0 and say which port it got)."""

    name = "nginx (the entry)"

    def __init__(self, scenario: Scenario, stack: Stack, pki: DevPki, prefix: Path) -> None:
        self.scenario, self.stack, self.pki, self.prefix = scenario, stack, pki, prefix
        # The entry's public certificate: a CA of its own (a public CA in a cluster), for the
        # route's host names.
        hosts = (*scenario.route["spec"]["hostnames"], "127.0.0.1")
        self.entry_pki = create_dev_pki(prefix / "pki", hosts=hosts)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def conf(self, log: Path) -> str:
        """What the chart's objects ask of the entry: the route's host names and service, the
        BackendTLSPolicy's check, the client certificate, a study's body size and timeouts."""
        env, pki, prefix = self.scenario.gateway_env, self.pki, self.prefix
        (rule,) = self.scenario.route["spec"]["rules"]
        timeout = _seconds(env, "IMAGING_STREAM_RECEIVE_SECONDS", "IMAGING_CALL_TIMEOUT_SECONDS")
        locations = "\n".join(
            f"""    location /{m["method"]["service"]}/ {{
      grpc_pass grpcs://127.0.0.1:{self.stack.ports.gateway};
      grpc_ssl_certificate {pki.client_cert};
      grpc_ssl_certificate_key {pki.client_key};
      grpc_ssl_trusted_certificate {pki.ca_cert};
      grpc_ssl_verify on;
      grpc_ssl_name {self.scenario.backend_tls["spec"]["validation"]["hostname"]};
      grpc_ssl_server_name on;
      grpc_read_timeout {timeout}s;
      grpc_send_timeout {timeout}s;
    }}"""
            for m in rule["matches"]
        )
        user = "user root root;\n" if os.geteuid() == 0 else ""
        body = int(env["IMAGING_MAX_STUDY_BYTES"]) + (1 << 20)  # the study and its framing
        return f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {log} info;
events {{}}
http {{
  access_log {prefix}/access.log;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{self.port} ssl http2;
    server_name {" ".join(self.scenario.route["spec"]["hostnames"])};
    ssl_certificate {self.entry_pki.server_cert};
    ssl_certificate_key {self.entry_pki.server_key};
    client_max_body_size {body};
{locations}
  }}
}}
"""

    def spawn(self, attempt: int) -> list[tuple[subprocess.Popen[bytes], Path]]:
        self.port = pick_port()
        log = for_attempt(self.prefix / "error.log", attempt)
        conf = for_attempt(self.prefix / "nginx.conf", attempt)
        conf.write_text(self.conf(log))
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [NGINX, "-c", str(conf), "-p", str(self.prefix), "-e", str(log)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return [(self.process, log)]

    def ready(self) -> bool:
        """A TLS handshake that shows the entry's certificate: nobody else's passes."""
        context = ssl.create_default_context(cafile=str(self.entry_pki.ca_cert))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


@pytest.fixture(scope="module")
def entry(
    scenario: Scenario, stack: Stack, pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Entry]:
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: run `bash scripts/system-packages.sh test` as root")
    launch = NginxEntry(scenario, stack, pki, tmp_path_factory.mktemp("entry"))
    start_all([launch], timeout=20)
    try:
        yield Entry(f"127.0.0.1:{launch.port}", launch.entry_pki.ca_cert)
    finally:
        launch.stop()


def _client_block() -> str:
    text = README.read_text()
    (block,) = re.findall(rf"{re.escape(MARKER)}\n```bash\n(.*?)```", text, flags=re.DOTALL)
    return block


def _run(script: str, entry: Entry, key: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "IMAGING_ENTRY": entry.address,
        "IMAGING_ENTRY_CA": str(entry.ca),
        "IMAGING_API_KEY": key,
    }
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_readme_client_call_works_through_the_entry(entry: Entry) -> None:
    done = _run(_client_block(), entry, API_KEY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"name": "cxr_pneumonia"' in done.stdout  # grpcurl's ListPipelines answer
    assert "cxr_pneumonia" in done.stdout.split("imaging.v1.Gateway/ListPipelines")[-1]
    # The analysis came back through the entry: the CLI's findings line for the study.
    assert re.search(r"pneumonia", done.stdout.rsplit("}", 1)[-1], re.IGNORECASE), done.stdout


def test_without_the_key_the_gateway_refuses_through_the_entry(entry: Entry) -> None:
    grpcurl_line = _client_block().split("\n.venv/bin/imaging-platform")[0]
    done = _run(grpcurl_line, entry, "not-a-key")
    assert done.returncode != 0
    assert "Unauthenticated" in done.stdout + done.stderr


def test_the_entry_routes_only_the_public_api(entry: Entry, stack: Stack, pki: DevPki) -> None:
    """Health (and reflection) stay inside the cluster: the route names imaging.v1.Gateway only.
    The gateway answers health to a caller with a client certificate; through the entry the
    same call finds no route."""
    request = health_pb2.HealthCheckRequest()
    direct = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(stack.gateway_address, direct, options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    through = grpc.ssl_channel_credentials(entry.ca.read_bytes())
    with (
        grpc.secure_channel(entry.address, through) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, caught.value.details()


def test_the_gateway_itself_needs_the_entry_client_certificate(stack: Stack, pki: DevPki) -> None:
    """Re-encryption is mutual: a caller that goes round the entry with only the CA fails the
    handshake; the same call with the entry's client pair gets the pipelines."""

    def call(*client: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(REPO_ROOT / ".venv" / "bin" / "grpcurl"),
                "-cacert",
                str(pki.ca_cert),
                *client,
                "-H",
                f"authorization: Bearer {API_KEY}",
                "-import-path",
                "protos",
                "-proto",
                "imaging/v1/gateway.proto",
                "-servername",
                "localhost",
                stack.gateway_address,
                "imaging.v1.Gateway/ListPipelines",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    refused = call()
    assert refused.returncode != 0
    assert "cxr_pneumonia" not in refused.stdout
    # Refused while connecting (the TLS handshake), not by an RPC status such as a bad key's.
    assert "Failed to dial target host" in refused.stderr, refused.stderr
    admitted = call("-cert", str(pki.client_cert), "-key", str(pki.client_key))
    assert admitted.returncode == 0, admitted.stderr
    assert '"name": "cxr_pneumonia"' in admitted.stdout
