"""Volume correctness through the real stack: the corpus's Enhanced MR fMRI slab (Siemens XA10,
four temporal positions of six 2.4 mm slices) is one series the brain pipeline refuses as a
slab, by its intended use, rather than measuring a "brain volume" in it; and an output a
pipeline cannot make is named in the answer's warnings instead of silently missing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from synthetic import brain_series

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc

pytestmark = pytest.mark.integration
XA10 = tuple(f"dcm_qa_enh/Siemens/XA10/6_{n}.dcm" for n in (1, 2, 3, 4))


def _xa10(dicom_dir: Path) -> list[bytes]:
    return [(dicom_dir / name).read_bytes() for name in XA10]


def test_the_fmri_slab_is_one_series_refused_as_a_slab(
    gateway: gateway_pb2_grpc.GatewayStub, dicom_dir: Path
) -> None:
    request = gateway_pb2.AnalyzeRequest(instances=_xa10(dicom_dir))
    with pytest.raises(grpc.RpcError) as refused:
        gateway.Analyze(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "assembles into" not in details  # one series, not "4 volumes"
    assert "mri_brain_extraction" in details and "slab" in details
    assert "spans 14.4 mm along the slice normal (6 x 2.4 mm)" in details
    # Asked to answer rather than fail, the refusal says the same, as an intended-use refusal.
    options = gateway_pb2.OutputOptions(report_refusal=True)
    answer = gateway.Analyze(
        gateway_pb2.AnalyzeRequest(instances=_xa10(dicom_dir), options=options), timeout=60
    )
    assert answer.refusal.kind == "OUTSIDE_INTENDED_USE"
    assert "slab" in answer.refusal.reason and not answer.measurements


def test_one_enhanced_instance_with_a_segmentation_asked_is_refused_for_coverage(
    gateway: gateway_pb2_grpc.GatewayStub, dicom_dir: Path
) -> None:
    """Before: INVALID_ARGUMENT "lacks PixelSpacing, ...", though they are in its functional
    groups. Now the geometry is read and the six slices are what is wrong."""
    options = gateway_pb2.OutputOptions(dicom_seg=True)
    request = gateway_pb2.AnalyzeRequest(instances=_xa10(dicom_dir)[:1], options=options)
    with pytest.raises(grpc.RpcError) as refused:
        gateway.Analyze(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "lacks" not in details and "6 slice(s), fewer than the 20" in details


def test_heatmaps_asked_of_the_volume_pipeline_come_back_as_a_warning(
    gateway: gateway_pb2_grpc.GatewayStub,
) -> None:
    options = gateway_pb2.OutputOptions(heatmaps=True, masks=True)
    response = gateway.Analyze(
        gateway_pb2.AnalyzeRequest(instances=brain_series(), options=options), timeout=120
    )
    assert response.pipeline == "mri_brain_extraction"
    [warning] = [w for w in response.warnings if "asked for" in w]
    assert warning.startswith(
        "heatmaps asked for, but pipeline 'mri_brain_extraction' cannot make any"
    )
    assert "volume pipeline" in warning
    # The masks it can make come back, with no warning about them.
    [segmentation] = response.segmentations
    assert segmentation.label == "brain" and response.measurements
