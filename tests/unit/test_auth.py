"""Gateway authentication: API-key digests, OIDC bearer JWTs and the interceptor."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from jwt.algorithms import ECAlgorithm

from services.common.errors import Unauthenticated
from services.common.interceptor import AsyncServiceInterceptor
from services.common.settings import GatewaySettings
from services.gateway.auth import ApiKeys, Authenticator, AuthInterceptor, OidcTokens

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


# --- the interceptor on a real in-process server ------------------------------------------

KEY = "in-process-key"
_ECHO = "/test.Echo/"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _repeat(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(2):  # a server-streaming method added later: not open either
        yield request


async def _write(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(request)  # the other streaming style (as health Watch)


async def _with_server(
    tmp_path: Path, scenario: Callable[[grpc.aio.Channel], Awaitable[None]]
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"pacs {hashlib.sha256(KEY.encode()).hexdigest()}\n")
    server = grpc.aio.server(
        interceptors=[
            AsyncServiceInterceptor("gateway"),
            AuthInterceptor(Authenticator(ApiKeys(keys_file))),
        ]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Echo",
                {
                    "Say": grpc.unary_unary_rpc_method_handler(_echo),
                    "Repeat": grpc.unary_stream_rpc_method_handler(_repeat),
                    "Write": grpc.unary_stream_rpc_method_handler(_write),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await scenario(channel)
    finally:
        await server.stop(0)


def _bearer_metadata(key: str = KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _services(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()
) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=metadata,
        timeout=5,
    )
    replies = [reply async for reply in call]
    return [s.name for r in replies for s in r.list_services_response.service]


async def _refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def test_reflection_needs_a_key_when_keys_are_on(tmp_path: Path) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        for metadata in ((), _bearer_metadata("wrong")):
            refused = await _refused(_services(channel, metadata))
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused.details()
            assert "credentials" in (refused.details() or "")
            # The seam's wire form: a request id the caller can quote to the operator.
            assert any(k == "x-request-id" for k, _ in refused.trailing_metadata() or ())
        assert health.SERVICE_NAME in await _services(channel, _bearer_metadata())

    asyncio.run(_with_server(tmp_path, scenario))


def test_every_other_streaming_method_needs_a_key(tmp_path: Path) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        for method, expected in (("Repeat", [b"hi", b"hi"]), ("Write", [b"hi"])):
            stream = channel.unary_stream(_ECHO + method)
            refused = await _refused(_collect(stream(b"hi", timeout=5)))
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert await _collect(stream(b"hi", metadata=_bearer_metadata(), timeout=5)) == (
                expected
            )

    asyncio.run(_with_server(tmp_path, scenario))


async def _collect(call: Any) -> list[Any]:
    return [item async for item in call]


def test_health_stays_open_without_a_key(tmp_path: Path) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        refused = await _refused(channel.unary_unary(_ECHO + "Say")(b"hi", timeout=5))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(_with_server(tmp_path, scenario))


def test_two_authorization_headers_are_refused(tmp_path: Path) -> None:
    twice = (("authorization", "Bearer wrong"), ("authorization", f"Bearer {KEY}"))

    async def scenario(channel: grpc.aio.Channel) -> None:
        say = channel.unary_unary(_ECHO + "Say")
        assert await say(b"hi", metadata=_bearer_metadata(), timeout=5) == b"hi"
        refused = await _refused(say(b"hi", metadata=twice, timeout=5))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "more than one authorization header" in (refused.details() or "")
        refused = await _refused(_services(channel, twice))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "more than one authorization header" in (refused.details() or "")

    asyncio.run(_with_server(tmp_path, scenario))


def test_a_gateway_with_credentials_serves_no_reflection_unless_told_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGING_REFLECTION", raising=False)
    monkeypatch.delenv("IMAGING_OIDC_ISSUER", raising=False)
    monkeypatch.delenv("IMAGING_API_KEYS_FILE", raising=False)
    assert GatewaySettings().reflection  # the open local demo keeps it
    monkeypatch.setenv("IMAGING_API_KEYS_FILE", str(tmp_path / "keys"))
    assert not GatewaySettings().reflection
    monkeypatch.setenv("IMAGING_REFLECTION", "true")
    assert GatewaySettings().reflection
    monkeypatch.delenv("IMAGING_REFLECTION")
    monkeypatch.delenv("IMAGING_API_KEYS_FILE")
    monkeypatch.setenv("IMAGING_OIDC_ISSUER", ISSUER)
    assert not GatewaySettings().reflection
    assert GatewaySettings(reflection=True).reflection
