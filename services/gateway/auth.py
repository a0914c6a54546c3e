"""Who is calling: an API key (``authorization: Bearer <key>``) or a client certificate.

``IMAGING_API_KEYS_FILE`` holds one ``<client-name> <sha256 hex of the key>`` per line (``#``
comments allowed); the gateway never sees a key it could leak, only digests. Every entry is
compared in constant time, and the file is re-read when it changes. With a keys file every
call except grpc.health.v1 needs a valid key; without one, a mutual-TLS client certificate's
common name identifies the caller, and without either the gateway is open (the local demo).
Identity comes only from the key or the certificate the TLS handshake verified, never from
a header that an entry point in front could forge.

Only the grpc.health.v1 methods are open, named in full; every other method, streaming or not
(server reflection included: a gateway with credentials serves it only when
IMAGING_REFLECTION=true, and then to callers with credentials), is checked before its handler
runs. A call with more than one ``authorization`` header is refused: which one counts would
depend on who reads it.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import jwt

from services.common.errors import Unauthenticated
from services.common.interceptor import request_id, rewrap, status

log = logging.getLogger(__name__)

# The caller of the RPC being served ("" when the gateway is open), for logs and the audit.
caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")

# The methods anyone may call, by full name (a prefix would also open whatever is added to
# the service later).
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
_LINE = re.compile(r"(?P<name>[A-Za-z0-9._@:-]{1,64})\s+(?P<digest>[0-9a-fA-F]{64})")
_RECHECK_SECONDS = 1.0


class ApiKeys:
    """The keys file, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._entries: list[tuple[str, bytes]] = []
        self._stamp = -1
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        stamp = self._path.stat().st_mtime_ns
        if stamp == self._stamp:
            return
        entries = []
        for number, raw in enumerate(self._path.read_text().splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = _LINE.fullmatch(line)
            if match is None:  # the line is not quoted: it may hold a key pasted by mistake
                raise ValueError(f"{self._path}:{number}: expected '<client-name> <sha256 hex>'")
            entries.append((match["name"], bytes.fromhex(match["digest"])))
        self._entries, self._stamp = entries, stamp
        log.info("API keys loaded: %d client(s)", len(entries))

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < _RECHECK_SECONDS:
            return
        self._checked = now
        try:
            self._load()
        except (OSError, ValueError) as err:  # keep the keys we have; say why
            log.error("API keys file not reloaded: %s", err)

    def client(self, key: str) -> str | None:
        """The name of the client holding ``key``, None if nobody does."""
        self._refresh()
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for name, expected in self._entries:  # every entry, so timing says nothing
            if hmac.compare_digest(digest, expected):
                found = name
        return found


def _metadata(pairs: Sequence[tuple[str, str | bytes]]) -> dict[str, str]:
    """The call's text headers; more than one ``authorization`` header is refused."""
    if sum(1 for key, _ in pairs if key == "authorization") > 1:
        raise Unauthenticated("more than one authorization header")
    return {key: value for key, value in pairs if isinstance(value, str)}


def _bearer(metadata: dict[str, str]) -> str | None:
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _certificate_name(context: grpc.aio.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else ""


class OidcTokens:
    """Bearer JWTs of one OIDC issuer, checked against its JWKS (signature, issuer, audience,
    expiry); the caller is the token's subject."""

    def __init__(self, issuer: str, audience: str, jwks_file: Path) -> None:
        self._issuer, self._audience = issuer, audience
        self._keys = jwt.PyJWKSet.from_json(jwks_file.read_text())

    def subject(self, token: str) -> str | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next(k for k in self._keys.keys if kid is None or k.key_id == kid)
            claims = jwt.decode(
                token,
                key=key,
                algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, StopIteration, ValueError):
            return None
        return f"oidc:{claims['sub']}"


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class Authenticator:
    """Decides the caller of one RPC (raises Unauthenticated)."""

    def __init__(self, keys: ApiKeys | None, tokens: OidcTokens | None = None) -> None:
        self._keys, self._tokens = keys, tokens

    def identify(self, metadata: dict[str, str], context: grpc.aio.ServicerContext) -> str:
        if self._keys is None and self._tokens is None:
            return _certificate_name(context)
        token = _bearer(metadata)
        if token is None:
            raise Unauthenticated("this gateway needs credentials: authorization: Bearer <key>")
        if self._tokens is not None and _looks_like_jwt(token):
            name = self._tokens.subject(token)
        else:
            name = self._keys.client(token) if self._keys is not None else None
        if name is None:
            raise Unauthenticated("the credentials are not valid")
        return name


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Runs inside the error seam (services/common/interceptor.py), so a refusal of a
    unary-response call is logged and answered like every other error; the seam passes
    response streams through, so those are refused here (UNAUTHENTICATED, the same reason).
    Only OPEN_METHODS skip the check."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        pairs = tuple(details.invocation_metadata or ())
        authenticator = self._authenticator

        def identify(context: grpc.aio.ServicerContext) -> None:
            # Not reset: the call's own context (one task per RPC) keeps it for the audit
            # record written around this interceptor.
            caller.set(authenticator.identify(_metadata(pairs), context))

        if handler.response_streaming:
            return _streaming(handler, identify, details.method, request_id(details))

        def wrap(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                identify(context)
                return await behavior(request, context)

            return wrapped

        return rewrap(handler, wrap)


def _streaming(
    handler: grpc.RpcMethodHandler,
    identify: Callable[[grpc.aio.ServicerContext], None],
    method: str,
    request_id: str,
) -> grpc.RpcMethodHandler:
    """``handler`` (unary-stream or stream-stream) running only after ``identify`` accepts the
    caller. The error seam does not wrap response streams, so a refusal is logged and answered
    here, in the seam's wire form (status code, reason, ErrorInfo, request id)."""

    async def check(context: grpc.aio.ServicerContext) -> None:
        try:
            identify(context)
        except Unauthenticated as err:
            log.info("%s %s %s: %s", method, err.code.name, err.kind, err.reason)
            wire = status(err, request_id)
            await context.abort(wire.code, wire.details, wire.trailing_metadata)

    behavior = handler.unary_stream or handler.stream_stream
    wrapped: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):

        async def responses(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(context)
            async for response in behavior(request, context):
                yield response

        wrapped = responses
    elif inspect.iscoroutinefunction(behavior):

        async def writes(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)  # the handler writes its responses with context.write
            return await behavior(request, context)

        wrapped = writes
    else:  # a plain generator: no event loop to abort on, so never served unchecked
        raise TypeError(f"{method}: response-streaming handlers must be async here")
    factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
