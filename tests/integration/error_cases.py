"""Inputs and extra in-process services that provoke each class of services.common.errors.

Used by test_error_table.py. The extra gateways run in the test process beside the session's
real stack and reuse its decoder and Triton; the "broken" deployment also runs its own
preprocessor and postprocessor, because a pipeline is run by the inner services that load it
from *their* pipelines folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import synthetic
import yaml
from ports import refused_port
from pydicom.encaps import encapsulate
from pydicom.uid import UID
from synthetic import dataset, to_bytes
from waiting import wait_until

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import Stack
from services.common.pipelines import PipelineRegistry
from services.common.settings import GatewaySettings, PipelineServiceSettings
from services.gateway import server as gateway_server
from services.postprocessor import server as postprocessor_server
from services.preprocessor import server as preprocessor_server

SHIPPED_PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"

# Pipelines of the "broken" deployment, each a copy of the shipped cxr_pneumonia with one
# deliberate inconsistency with the served model (and never routed to automatically).
BAD_COLUMN = "cxr_bad_column"  # its finding reads logit column 5; the model has 1
BAD_INPUT = "cxr_bad_input"  # names a model input the model lacks
BAD_INPUT_NAME = "no_such_input_tensor"
MISSING_MODEL = "cxr_missing_model"  # names a model Triton does not serve
MISSING_MODEL_NAME = "no_such_model_on_triton"


# --- DICOM ---------------------------------------------------------------------------------


def good_chest() -> bytes:
    return to_bytes(dataset(np.full((32, 32), 100, np.uint8)))


def mpeg2_instance() -> bytes:
    """Well-formed DICOM in a transfer syntax (MPEG2 video) the platform does not decode."""
    ds = dataset(np.full((32, 32), 100, np.uint8))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def gapped_mr_series(slices: int = 16, size: int = 32, drop: int = 8) -> list[bytes]:
    """An axial MR head series (2 mm steps) with slice ``drop`` left out, so that the
    positions have a gap; mri_brain_extraction routes it and refuses it."""
    volume = np.stack([np.full((size, size), 500 + k, np.uint16) for k in range(slices)])
    return synthetic.mr_head_series(volume, (2.0, 1.5, 1.5), drop=drop)


# --- pipelines -----------------------------------------------------------------------------


def _variant(base: dict[str, Any], name: str, edit: Callable[[dict[str, Any]], None]) -> str:
    spec = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    spec["name"] = name
    spec["auto_route"] = False
    spec["description"] = f"deliberately broken copy of {base['name']} (error table test)"
    edit(spec)
    return yaml.safe_dump(spec, sort_keys=False)


def write_broken_pipelines(folder: Path) -> Path:
    """The shipped pipelines plus the broken variants, as one deployment's pipelines folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in SHIPPED_PIPELINES.glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    base = yaml.safe_load((SHIPPED_PIPELINES / "cxr_pneumonia.yaml").read_text())

    def bad_column(spec: dict[str, Any]) -> None:
        spec["postprocess"]["findings"][0]["index"] = 5

    def bad_input(spec: dict[str, Any]) -> None:
        spec["model"]["input"] = BAD_INPUT_NAME

    def missing_model(spec: dict[str, Any]) -> None:
        spec["model"]["name"] = MISSING_MODEL_NAME

    for name, edit in ((BAD_COLUMN, bad_column), (BAD_INPUT, bad_input)):
        (folder / f"{name}.yaml").write_text(_variant(base, name, edit))
    (folder / f"{MISSING_MODEL}.yaml").write_text(_variant(base, MISSING_MODEL, missing_model))
    PipelineRegistry.load(folder)  # fail here, clearly, if a variant no longer validates
    return folder


# --- extra in-process services -------------------------------------------------------------


def _settings(pipelines_dir: Path, stack: Stack) -> PipelineServiceSettings:
    """In-process services beside the stack: they share its decoder's pixel exchange."""
    return PipelineServiceSettings(
        port=0,
        metrics_port=0,
        pipelines_dir=pipelines_dir,
        pixel_exchange_dir=stack.pixel_exchange_dir,
    )


@contextmanager
def deployments(stack: Stack, workdir: Path) -> Iterator[dict[str, str]]:
    """Gateway address of each deployment a case is sent to: the session stack's own and
    four extra in-process gateways beside it:

    - ``broken``: own preprocessor and postprocessor; pipelines folder = shipped + broken ones;
    - ``dead_triton``: a Triton address with nothing listening;
    - ``deadline``: every inner call has a 1 µs deadline, expired before it is sent however
      fast the peer (a 1 ms one was met by the in-process decoder on a quick machine);
    - ``miswired``: its postprocessor address is the decoder's (a service that is not one);
    - ``full``: one study at a time and no queue, its slot held by a stream that never ends;
    - ``keyed``: every call needs an API key (the cases send none);
    - ``restricted``: the anonymous caller's policy allows only us_breast;
    - ``rated``: its rate limit allows one study per 1000 s, used up before the cases run.
    """
    local = "127.0.0.1"
    decoder = f"{local}:{stack.ports.decoder}"
    real = GatewaySettings(
        port=0,
        metrics_port=0,
        decoder_address=decoder,
        preprocessor_address=f"{local}:{stack.ports.preprocessor}",
        postprocessor_address=f"{local}:{stack.ports.postprocessor}",
        triton_address=stack.triton_grpc_address,
        call_timeout_seconds=30.0,
    )
    with ExitStack() as cleanup:

        def serve(**changes: object) -> str:
            running = gateway_server.start(real.model_copy(update=changes))
            cleanup.callback(running.stop, 0)
            return f"{local}:{running.port}"

        broken_dir = write_broken_pipelines(workdir / "pipelines")
        pre = preprocessor_server.start(_settings(broken_dir, stack))
        post = postprocessor_server.start(_settings(broken_dir, stack))
        cleanup.callback(pre.stop, 0)
        cleanup.callback(post.stop, 0)
        # Bound here and never listening while the deployments last: refused, and untakeable.
        dead_triton = cleanup.enter_context(refused_port(local))
        yield {
            "stack": stack.gateway_address,
            "broken": serve(
                pipelines_dir=broken_dir,
                preprocessor_address=f"{local}:{pre.port}",
                postprocessor_address=f"{local}:{post.port}",
            ),
            "dead_triton": serve(triton_address=f"{local}:{dead_triton}"),
            "deadline": serve(call_timeout_seconds=1e-6),
            "miswired": serve(postprocessor_address=decoder),
            "keyed": serve(api_keys_file=write_api_keys(workdir / "api-keys")),
            # The anonymous caller ("": no keys on these gateways) under a policy.
            "restricted": serve(
                client_policy_file=write_policy(
                    workdir / "restricted.yaml", "pipelines: [us_breast]"
                )
            ),
            "rated": use_the_only_token(
                serve(
                    client_policy_file=write_policy(
                        workdir / "rated.yaml", "rate: {per_second: 0.001, burst: 1}"
                    )
                ),
                cleanup,
            ),
            "full": hold_the_only_slot(
                serve(max_concurrent_studies=1, max_queued_studies=0), cleanup
            ),
        }


API_KEY = "test-key-of-the-error-table"


def write_api_keys(path: Path) -> Path:
    path.write_text(f"error-table {hashlib.sha256(API_KEY.encode()).hexdigest()}\n")
    return path


def write_policy(path: Path, entry: str) -> Path:
    path.write_text(f'"":\n  {entry}\n')
    return path


def use_the_only_token(address: str, cleanup: ExitStack) -> str:
    channel = grpc.insecure_channel(address)
    cleanup.callback(channel.close)
    stub = gateway_pb2_grpc.GatewayStub(channel)
    with contextlib.suppress(grpc.RpcError):  # an empty study: refused, but it takes the token
        stub.Analyze(gateway_pb2.AnalyzeRequest(), timeout=10)
    return address


def hold_the_only_slot(address: str, cleanup: ExitStack) -> str:
    """Open an AnalyzeStream that sends its header and then waits, so it holds the gateway's
    one study slot; returns once the gateway refuses other studies as overloaded."""
    release = threading.Event()

    def stalled() -> Iterator[gateway_pb2.AnalyzeChunk]:
        yield gateway_pb2.AnalyzeChunk(header=gateway_pb2.AnalyzeHeader())
        release.wait(300)

    channel = grpc.insecure_channel(address)
    cleanup.callback(channel.close)
    stub = gateway_pb2_grpc.GatewayStub(channel)
    held = stub.AnalyzeStream.future(stalled())
    cleanup.callback(held.cancel)
    cleanup.callback(release.set)

    def slot_taken() -> bool:
        try:  # an empty request: INVALID_ARGUMENT while the slot is free
            stub.Analyze(gateway_pb2.AnalyzeRequest(), timeout=5)
        except grpc.RpcError as err:
            return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False

    wait_until(slot_taken, 30, "the stalled stream never took the gateway's slot")
    return address
