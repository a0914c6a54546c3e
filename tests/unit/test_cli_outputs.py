import json
from pathlib import Path

from services.api.imaging.v1 import findings_pb2, gateway_pb2
from services.cli import main as main_module
from services.cli.main import write_outputs


def test_heatmaps_become_png_files_referenced_from_the_json(tmp_path: Path) -> None:
    response = gateway_pb2.AnalyzeResponse(
        request_id="r1",
        findings=[
            findings_pb2.Finding(code="233604007", probability=0.9, heatmap_png=b"\x89PNG fake"),
            findings_pb2.Finding(code="233604007", probability=0.1),
        ],
    )
    written = write_outputs(tmp_path, "study", response)
    assert {p.name for p in written} == {"study.findings.json", "study.0.233604007.heatmap.png"}
    assert (tmp_path / "study.0.233604007.heatmap.png").read_bytes() == b"\x89PNG fake"
    document = json.loads((tmp_path / "study.findings.json").read_text())
    assert document["findings"][0]["heatmapFile"] == "study.0.233604007.heatmap.png"
    assert "heatmapPng" not in document["findings"][0]
    assert "heatmapFile" not in document["findings"][1]
    assert response.findings[0].heatmap_png  # the caller's message is left untouched


def test_pipeline_listing_says_which_pipelines_run_only_by_name() -> None:
    routed = gateway_pb2.PipelineInfo(name="a", accepts="Modality in ['CR']", auto_route=True)
    named = gateway_pb2.PipelineInfo(name="b", accepts="Modality in ['CR']", auto_route=False)
    assert main_module._routing(routed) == "accepts Modality in ['CR']"
    assert main_module._routing(named) == (
        "accepts Modality in ['CR']; only when a request names it"
    )
