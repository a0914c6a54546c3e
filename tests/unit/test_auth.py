"""Gateway authentication: API-key digests and OIDC bearer JWTs."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.common.errors import Unauthenticated
from services.gateway.auth import ApiKeys, Authenticator, OidcTokens

ISSUER, AUDIENCE = "https://idp.hospital.example", "imaging-gateway"


class _NoCertificate:
    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


def _jwks(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="ES256", use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return path


def _token(key: ec.EllipticCurvePrivateKey, **overrides: Any) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "dr-house", "exp": int(time.time()) + 300}
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})


@pytest.fixture
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_a_valid_token_names_its_subject(
    signing_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    tokens = OidcTokens(ISSUER, AUDIENCE, _jwks(tmp_path, signing_key))
    assert tokens.subject(_token(signing_key)) == "oidc:dr-house"


@pytest.mark.parametrize(
    "overrides",
    [{"aud": "another-service"}, {"iss": "https://evil.example"}, {"exp": int(time.time()) - 10}],
    ids=["audience", "issuer", "expired"],
)
def test_tokens_for_someone_else_or_expired_are_refused(
    signing_key: ec.EllipticCurvePrivateKey, tmp_path: Path, overrides: dict[str, Any]
) -> None:
    tokens = OidcTokens(ISSUER, AUDIENCE, _jwks(tmp_path, signing_key))
    assert tokens.subject(_token(signing_key, **overrides)) is None


def test_a_token_signed_by_another_key_is_refused(
    signing_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    tokens = OidcTokens(ISSUER, AUDIENCE, _jwks(tmp_path, signing_key))
    forged = _token(ec.generate_private_key(ec.SECP256R1()))
    assert tokens.subject(forged) is None
    assert tokens.subject("not.a.token") is None


def test_keys_and_tokens_side_by_side(
    signing_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"pacs {hashlib.sha256(b'secret-key').hexdigest()}\n")
    auth = Authenticator(
        ApiKeys(keys_file), OidcTokens(ISSUER, AUDIENCE, _jwks(tmp_path, signing_key))
    )
    context: Any = _NoCertificate()
    assert auth.identify({"authorization": "Bearer secret-key"}, context) == "pacs"
    assert (
        auth.identify({"authorization": f"Bearer {_token(signing_key)}"}, context)
        == "oidc:dr-house"
    )
    for metadata in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic secret-key"}):
        with pytest.raises(Unauthenticated):
            auth.identify(metadata, context)


def test_an_api_keys_file_change_is_picked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.gateway import auth as auth_module

    path = tmp_path / "keys"
    path.write_text(f"old {hashlib.sha256(b'k1').hexdigest()}\n")
    keys = ApiKeys(path)
    assert keys.client("k1") == "old"
    monkeypatch.setattr(auth_module, "_RECHECK_SECONDS", 0.0)
    path.write_text(f"new {hashlib.sha256(b'k2').hexdigest()}  # rotated\n")
    import os

    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert keys.client("k2") == "new" and keys.client("k1") is None


def test_a_malformed_keys_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("pacs plaintext-key-pasted-by-mistake\n")
    with pytest.raises(ValueError) as caught:
        ApiKeys(path)
    assert "plaintext-key" not in str(caught.value)
