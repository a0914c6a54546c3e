"""How `imaging-platform up` lets the ingest's worker call the gateway: its own key added to
the keys file the user gave, and a policy entry allowing it (alone) to assert the DICOM origin."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from services.cli.pki import create_dev_pki
from services.cli.stack import INGEST_CLIENT, Stack
from services.common.listeners import Service


@pytest.fixture(autouse=True)
def no_imaging_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IMAGING_API_KEYS_FILE", "IMAGING_CLIENT_POLICY_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_with_keys_the_worker_gets_its_own_key_and_the_users_policy_is_kept(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("reading-room " + "a" * 64 + "\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"reading-room": {"pipelines": ["cxr_pneumonia"]}}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stack = Stack(
        run_dir=run_dir,
        ingest=True,
        extra_env={"IMAGING_API_KEYS_FILE": str(keys), "IMAGING_CLIENT_POLICY_FILE": str(policy)},
    )
    # The gateway's whole environment: the user's files (extra_env) must not win over the
    # merged ones.
    env = stack._service_env(Service.GATEWAY)
    secret = (run_dir / "ingest-api-key").read_text().strip()
    merged = Path(env["IMAGING_API_KEYS_FILE"]).read_text().splitlines()
    assert merged == [
        "reading-room " + "a" * 64,
        f"{INGEST_CLIENT} {hashlib.sha256(secret.encode()).hexdigest()}",
    ]
    written = yaml.safe_load(Path(env["IMAGING_CLIENT_POLICY_FILE"]).read_text())
    assert written == {
        "reading-room": {"pipelines": ["cxr_pneumonia"]},
        INGEST_CLIENT: {"assert_origin": True},
    }
    ingest_env: dict[str, str] = {}
    stack._ingest_env(ingest_env)
    assert ingest_env["IMAGING_GATEWAY_API_KEY_FILE"] == str(run_dir / "ingest-api-key")


def test_without_keys_the_worker_is_known_by_its_certificate_or_as_anonymous(
    tmp_path: Path,
) -> None:
    anonymous = Stack(run_dir=tmp_path, ingest=True)
    env: dict[str, str] = {}
    anonymous._gateway_access(env)
    policy = yaml.safe_load(Path(env["IMAGING_CLIENT_POLICY_FILE"]).read_text())
    # Everyone keeps every right (no policy was given); only the worker's name may assert.
    assert policy == {"*": {}, "": {"assert_origin": True}}
    assert "IMAGING_API_KEYS_FILE" not in env

    tls = Stack(run_dir=tmp_path, ingest=True)
    tls.use_dev_pki(create_dev_pki(tmp_path / "tls"))
    env = {}
    tls._gateway_access(env)
    policy = yaml.safe_load(Path(env["IMAGING_CLIENT_POLICY_FILE"]).read_text())
    # Its own certificate, not the CLI's: the CLI's user may not assert an origin.
    assert policy == {"*": {}, INGEST_CLIENT: {"assert_origin": True}}
    ingest_env: dict[str, str] = {}
    tls._ingest_env(ingest_env)
    assert ingest_env["IMAGING_GATEWAY_TLS_CERT"] == str(tls.client_tls.cert)  # type: ignore[union-attr]
    # The studies API answers the CLI's certificate alone.
    assert ingest_env["IMAGING_ALLOWED_PEERS"] == "imaging-cli"
