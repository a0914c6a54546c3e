"""Fixtures shared by the chart tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import helm_python as helm
import pytest
from chart_support import CHART_DIR


@pytest.fixture(scope="module")
def schemaless_chart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm.Chart]:
    """The chart without values.schema.json, to prove the template checks hold on their own."""
    copy_dir = tmp_path_factory.mktemp("chart") / "imaging-platform"
    shutil.copytree(CHART_DIR, copy_dir, symlinks=False)
    (copy_dir / "values.schema.json").unlink()
    with helm.Chart.load(copy_dir) as chart:
        yield chart
