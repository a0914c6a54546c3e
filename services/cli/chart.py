"""`imaging-platform chart render`: the Helm chart's manifests without a helm binary.

The chart is rendered by Helm's own Go engine through helm-python-sdk (the library the chart
tests use), with the chart's values schema applied, exactly as `helm template` would; the output
is the multi-document YAML `helm template` prints, for review or `kubectl apply --dry-run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.cli.usage import UsageError

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "imaging-platform"


def merged_values(files: list[Path]) -> dict[str, Any]:
    """Values files merged left to right (later keys win, maps merged), as `helm -f a -f b`."""
    merged: dict[str, Any] = {}
    for path in files:
        if not path.is_file():
            raise UsageError(f"values file {path} not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise UsageError(f"values file {path} is not a YAML mapping")
        _merge(merged, loaded)
    return merged


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def render(values_files: list[Path], name: str, namespace: str) -> str:
    """The rendered manifests, one YAML document per template, in template-name order."""
    import helm_python as helm  # the dev environment's; imported here so other commands start fast

    values = merged_values(values_files)
    try:
        with helm.Chart.load(CHART_DIR) as chart:
            documents = chart.render(values or None, name=name, namespace=namespace)
    except (helm.HelmValuesError, helm.HelmRenderError) as err:
        raise UsageError(f"the chart refused these values: {err}") from None
    parts = [
        f"---\n# Source: {template}\n{text.strip()}\n"
        for template, text in sorted(documents.items())
        if text.strip() and not template.endswith("NOTES.txt")  # helm prints it after install
    ]
    return "".join(parts)
