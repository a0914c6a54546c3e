"""A user's mistakes get one line on stderr and a non-zero exit, never a traceback.

Each case is a mistake a new user made following the README: a missing file, a folder, an
unknown document kind, a literal `RUN/...` path, a TLS gateway called without TLS flags, a
keyed gateway called without a key, a non-empty --out. The gateways are real, in this process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.cli.main import main
from services.cli.pki import create_dev_pki
from services.common.settings import GatewaySettings
from services.gateway import server as gateway_server

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/dicom/pydicom-data/RG1_UNCR.dcm"


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A gateway serving mutual TLS and one asking for API keys (peers unreachable)."""
    workdir = tmp_path_factory.mktemp("cli-errors")
    pki = create_dev_pki(workdir / "pki")
    keys = workdir / "api-keys"
    keys.write_text(f"someone {hashlib.sha256(b'a-key').hexdigest()}\n")
    base = GatewaySettings(port=0, metrics_port=0, peer_unreachable_seconds=60)
    tls = gateway_server.start(
        base.model_copy(
            update={"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_ca": pki.ca_cert}
        )
    )
    keyed = gateway_server.start(base.model_copy(update={"api_keys_file": keys}))
    yield {"tls": f"127.0.0.1:{tls.port}", "keyed": f"127.0.0.1:{keyed.port}"}
    tls.stop(0)
    keyed.stop(0)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, argv
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


MISTAKES: dict[str, Callable[[Path], tuple[list[str], str]]] = {
    "a missing file": lambda d: (["analyze", str(d / "chest.dcm")], "chest.dcm: no such file"),
    "a folder without DICOM images": lambda d: (
        ["analyze", str(d)],
        "no DICOM image in",  # its one file is JSON: skipped and counted, nothing to send
    ),
    "an unknown document kind": lambda d: (
        ["analyze", str(SAMPLE), "--documents", "sr,pdf"],
        "unknown document kind(s) pdf; choose from sr, seg, heatmap, fhir",
    ),
    "a literal RUN path": lambda d: (
        [
            "pipelines",
            "--tls-ca",
            "RUN/tls/ca.pem",
            "--tls-cert",
            "RUN/tls/client.pem",
            "--tls-key",
            "RUN/tls/client-key.pem",
        ],
        "does not exist",  # the first of the three that is checked
    ),
    "a non-empty --out": lambda d: (
        ["analyze", str(SAMPLE), "--out", str(d)],
        "is not empty: name a new folder, or pass --force",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
def test_a_mistake_before_any_call_is_one_line(
    mistake: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "already-there.json").write_text("{}")
    argv, expected = MISTAKES[mistake](tmp_path)
    _one_line_error(capsys, argv, expected)


def test_a_tls_gateway_called_without_tls_flags_is_one_line(
    gateways: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["pipelines"], ["analyze", str(SAMPLE)]):
        _one_line_error(
            capsys,
            [*argv, "--gateway", gateways["tls"]],
            "A gateway serving TLS needs --tls-ca, --tls-cert and --tls-key",
        )


def test_a_keyed_gateway_called_without_a_key_is_one_line(
    gateways: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _one_line_error(
        capsys,
        ["pipelines", "--gateway", gateways["keyed"]],
        "pass --api-key or set IMAGING_API_KEY",
    )
