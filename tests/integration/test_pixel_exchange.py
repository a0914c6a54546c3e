"""Decoded pixels reach the preprocessor through shared memory, not through the gateway."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import CHEST_FILES

from services.api.imaging.v1 import (
    decoder_pb2,
    decoder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    preprocessor_pb2,
    preprocessor_pb2_grpc,
)
from services.cli.stack import Stack
from services.common import convert, tensors
from services.common.exchange import PixelExchange

pytestmark = pytest.mark.integration
BIG = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def test_the_decoder_leaves_pixels_in_the_exchange_and_the_preprocessor_takes_them(
    stack: Stack, dicom_dir: Path
) -> None:
    dicom = (dicom_dir / CHEST_FILES[0]).read_bytes()
    exchange = stack.pixel_exchange_dir
    with (
        grpc.insecure_channel(f"127.0.0.1:{stack.ports.decoder}", options=BIG) as dec,
        grpc.insecure_channel(f"127.0.0.1:{stack.ports.preprocessor}", options=BIG) as pre,
    ):
        decode = decoder_pb2_grpc.DicomDecoderStub(dec).Decode
        preprocess = preprocessor_pb2_grpc.PreprocessorStub(pre).Preprocess
        shared = decode(decoder_pb2.DecodeRequest(dicom=dicom, shared_output=True))
        inline = decode(decoder_pb2.DecodeRequest(dicom=dicom))
        handle = shared.image.shared_pixels
        # The reply is small: a handle and the attributes, no pixels.
        assert handle.name and not shared.image.HasField("pixels")
        assert shared.ByteSize() < 10_000 < 1955 * 1841 * 2 < inline.ByteSize()
        assert (exchange / handle.name).exists()
        assert list(handle.shape) == list(tensors.from_proto(inline.image.pixels).shape)

        def batch(image: object) -> np.ndarray:
            request = preprocessor_pb2.PreprocessRequest(pipeline="cxr_pneumonia", images=[image])
            return tensors.from_proto(preprocess(request).batch)

        np.testing.assert_array_equal(batch(shared.image), batch(inline.image))
        assert not (exchange / handle.name).exists()  # read once, then deleted


def test_an_analysed_study_leaves_nothing_in_the_exchange(
    stack: Stack, dicom_dir: Path, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    before = set(stack.pixel_exchange_dir.iterdir())
    dicom = (dicom_dir / CHEST_FILES[0]).read_bytes()
    for _ in range(3):
        assert gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[dicom])).findings
    assert set(stack.pixel_exchange_dir.iterdir()) <= before


def test_a_file_shared_by_the_gateway_is_decoded_and_consumed(
    stack: Stack, dicom_dir: Path
) -> None:
    dicom = (dicom_dir / CHEST_FILES[0]).read_bytes()
    exchange = PixelExchange(stack.pixel_exchange_dir)
    sent = exchange.put_bytes(dicom)
    assert sent is not None
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.decoder}", options=BIG) as channel:
        decode = decoder_pb2_grpc.DicomDecoderStub(channel).Decode
        request = decoder_pb2.DecodeRequest(shared_dicom=convert.shared_to_proto(sent))
        shared = decode(request)
        inline = decode(decoder_pb2.DecodeRequest(dicom=dicom))
        with pytest.raises(grpc.RpcError) as again:  # a handle is read once
            decode(request)
    assert not (stack.pixel_exchange_dir / sent.name).exists()
    assert shared.image == inline.image  # pixels inline both times: shared_output not asked
    assert again.value.code() == grpc.StatusCode.INTERNAL
