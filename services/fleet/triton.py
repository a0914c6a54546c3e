"""Thin adapter over tritonclient.grpc for one Triton pod in explicit model-control mode.

It turns Triton's answers into ModelState and its errors into PodCallFailed with a reason a
person can act on; the decisions about what to call stay in core.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from services.common import tls
from services.common.remote_errors import triton_code
from services.common.tls_files import PLAINTEXT, TlsFiles
from services.fleet.core import ModelState, versions_label
from services.fleet.errors import PodCallFailed

POLL_SECONDS = 0.2


def _one_line(text: str) -> str:
    """Triton's text on one line, without the python backend's traceback ("At: ...")."""
    return " ".join(text.split("\n\n")[0].split()).rstrip(";")


def _reason(err: InferenceServerException) -> str:
    code = triton_code(err)
    message = _one_line(str(err.message() or err))
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"unreachable ({message})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer before the deadline"
    return message


# Triton's restricted protocols (--grpc-restricted-protocol=...:admin-key=<value>) read this.
ADMIN_KEY_HEADER = "triton-grpc-protocol-admin-key"


class TritonPod:
    """One tritonserver, reached directly at its pod address (never through the Service)."""

    def __init__(
        self,
        address: str,
        call_timeout: float = 10.0,
        files: TlsFiles = PLAINTEXT,
        admin_key: str = "",
        server_name: str = "",
    ) -> None:
        """``files``: mutual TLS to Triton; ``admin_key``: the value of the admin key that
        Triton's restricted model-repository protocol expects (``admin-key``); ``server_name``:
        the name to check the certificate against, since pods are dialled by IP."""
        self.address = address
        self._call_timeout = call_timeout
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else None
        self._client = triton_grpc.InferenceServerClient(
            url=address, creds=tls.channel_credentials(files), channel_args=options
        )
        self._headers = {ADMIN_KEY_HEADER: admin_key} if admin_key else None

    def close(self) -> None:
        self._client.close()

    def infer(
        self, model: str, version: int, inputs: Mapping[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        """Every output of one inference of ``model`` ``version`` (the golden check)."""
        requests = []
        for name, array in inputs.items():
            request = triton_grpc.InferInput(
                name, list(array.shape), np_to_triton_dtype(array.dtype)
            )
            request.set_data_from_numpy(array)
            requests.append(request)
        try:
            result = self._client.infer(
                model,
                requests,
                model_version=str(version),
                headers=self._headers,
                client_timeout=timeout,
            )
        except InferenceServerException as err:
            raise self._fail(f"asking {model} v{version} the golden input", err) from err
        names = [output.name for output in result.get_response().outputs]
        return {name: result.as_numpy(name) for name in names}

    def _fail(self, what: str, err: InferenceServerException) -> PodCallFailed:
        return PodCallFailed(what, self.address, _reason(err))

    def state(self, model: str) -> ModelState:
        """READY versions of ``model`` (repository index) and, when loaded, its config."""
        try:
            index = self._client.get_model_repository_index(
                headers=self._headers, client_timeout=self._call_timeout
            )
        except InferenceServerException as err:
            raise self._fail("reading the model repository index", err) from err
        versions: list[int] = []
        reasons: dict[int, str] = {}
        known = False
        for entry in index.models:
            known = known or entry.name == model
            if entry.name != model or not str(entry.version).isdigit():
                continue
            if entry.state == "READY":
                versions.append(int(entry.version))
            elif entry.reason:
                reasons[int(entry.version)] = f"{entry.state}: {_one_line(entry.reason)}"
        config: dict[str, Any] | None = None
        if versions:
            try:
                reply = self._client.get_model_config(
                    model, as_json=True, headers=self._headers, client_timeout=self._call_timeout
                )
            except InferenceServerException as err:
                raise self._fail(f"reading the config of {model}", err) from err
            config = dict(reply["config"])
        return ModelState(tuple(sorted(versions)), config, reasons, known)

    def load(self, model: str, config: Mapping[str, Any] | None, timeout: float) -> None:
        """Triton's load blocks until the versions are loaded or have failed to."""
        try:
            self._client.load_model(
                model,
                config=json.dumps(config) if config is not None else None,
                headers=self._headers,
                client_timeout=timeout,
            )
        except InferenceServerException as err:
            raise self._fail(f"loading {model}", err) from err

    def unload(self, model: str) -> None:
        try:
            self._client.unload_model(
                model, headers=self._headers, client_timeout=self._call_timeout
            )
        except InferenceServerException as err:
            raise self._fail(f"unloading {model}", err) from err

    def _ready(self, model: str, version: int | None) -> bool:
        try:
            return bool(
                self._client.is_model_ready(
                    model,
                    str(version) if version is not None else "",
                    headers=self._headers,
                    client_timeout=self._call_timeout,
                )
            )
        except InferenceServerException as err:
            raise self._fail(f"checking that {model} is ready", err) from err

    def wait_ready(self, model: str, versions: tuple[int, ...], timeout: float) -> ModelState:
        """Poll until every version in ``versions`` (else any version) is READY."""
        deadline = time.monotonic() + timeout
        wanted: tuple[int | None, ...] = versions or (None,)
        while True:
            if all(self._ready(model, v) for v in wanted):
                return self.state(model)
            if time.monotonic() >= deadline:
                state = self.state(model)
                why = "; ".join(f"v{v} {state.reasons[v]}" for v in versions if v in state.reasons)
                what = f"{model} {versions_label(versions)}" if versions else model
                raise PodCallFailed(
                    f"waiting for {what}",
                    self.address,
                    f"not READY after {timeout:.0f} s "
                    + (f"({why})" if why else f"(READY: {versions_label(state.versions)})"),
                )
            time.sleep(POLL_SECONDS)

    def wait_unloaded(self, model: str, timeout: float) -> None:
        """Triton unloads in the background; the model stops being ready at once."""
        deadline = time.monotonic() + timeout
        while self._ready(model, None):
            if time.monotonic() >= deadline:
                raise PodCallFailed(
                    f"unloading {model}", self.address, f"still ready after {timeout:.0f} s"
                )
            time.sleep(POLL_SECONDS)
