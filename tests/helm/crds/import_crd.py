"""Turn one upstream CustomResourceDefinition into the closed JSON Schema the chart tests use.

Why: kubernetes-validate only knows built-in kinds, so the chart's custom resources are checked with
jsonschema against files in this folder. Copying a large CRD by hand is error-prone, and an
upstream ``openAPIV3Schema`` used as is would accept any misspelled field: the API server prunes or
(with kubectl's default strict field validation) rejects unknown fields, while JSON Schema allows
them unless an object says ``additionalProperties: false``. This converter does that mechanically
and reproducibly:

- picks one served version of the CRD and takes its ``openAPIV3Schema`` in full;
- closes every object schema (one with ``properties`` or ``type: object``) that has neither
  ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` (``additionalProperties:
  false``), and spells the latter ``additionalProperties: true``;
- translates the other Kubernetes extensions JSON Schema can express (``x-kubernetes-list-type:
  set`` is ``uniqueItems``, ``x-kubernetes-int-or-string`` is integer-or-string, ``nullable``
  allows null) and drops the rest, CEL rules (``x-kubernetes-validations``) included: jsonschema
  cannot run them;
- replaces ``apiVersion``/``kind``/``metadata`` by the wrapping the hand-written schemas use
  (constants, a DNS-1123 ``metadata.name``) and requires ``spec``;
- fails on any schema keyword it does not know, and on a ``pattern`` Python's ``re`` rejects,
  instead of silently weakening the check.

The output is JSON with sorted keys and a final newline, so re-running it gives the same bytes::

    python tests/helm/crds/import_crd.py CRD.yaml --version v1 --output OUT.json \\
        --source "owner/repo vX.Y.Z path/in/repo.yaml"
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
DNS_1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": DNS_1123_SUBDOMAIN, "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

# Keywords of a structural OpenAPI v3 schema that mean the same in JSON Schema draft 7.
PLAIN_KEYWORDS = frozenset(
    {
        "default",
        "description",
        "enum",
        "example",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "format",
        "maxItems",
        "maxLength",
        "maxProperties",
        "maximum",
        "minItems",
        "minLength",
        "minProperties",
        "minimum",
        "multipleOf",
        "pattern",
        "required",
        "title",
        "type",
        "uniqueItems",
    }
)
# Kubernetes extensions with no JSON Schema equivalent: dropped (see the module docstring).
DROPPED_EXTENSIONS = frozenset(
    {
        "x-kubernetes-embedded-resource",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)
PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"
LIST_TYPE = "x-kubernetes-list-type"


def strip_template_lines(text: str) -> str:
    """Remove lines that are only a Helm template directive (cert-manager's chart copies)."""
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.strip().startswith("{{")
    )


def load_crd(text: str) -> dict[str, Any]:
    """The one CustomResourceDefinition in a (possibly multi-document) YAML text."""
    docs = [d for d in yaml.safe_load_all(strip_template_lines(text)) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise ValueError(f"expected one CustomResourceDefinition, found {len(crds)}")
    crd: dict[str, Any] = crds[0]
    return crd


def version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of a served version."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            if not entry.get("served", False):
                raise ValueError(f"version {version} is not served")
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    names = [v["name"] for v in crd["spec"]["versions"]]
    raise ValueError(f"version {version} not in {names}")


def convert(node: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A structural OpenAPI v3 schema as closed JSON Schema (a new dict; ``node`` is unchanged)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in PLAIN_KEYWORDS:
            out[key] = value
        elif key == "properties":
            out[key] = {name: convert(sub, f"{where}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = convert(value, f"{where}[]")
        elif key == "additionalProperties":
            out[key] = convert(value, f"{where}{{}}") if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(sub, f"{where}({key})") for sub in value]
        elif key == "not":
            out[key] = convert(value, f"{where}(not)")
        elif key == "nullable":
            pass  # below, once "type" is copied
        elif key == LIST_TYPE:
            if value == "set":
                out["uniqueItems"] = True
        elif key == INT_OR_STRING:
            if value and "type" not in node and "anyOf" not in node:
                out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        elif key == PRESERVE or key in DROPPED_EXTENSIONS:
            pass
        else:
            raise ValueError(f"{where or '.'}: unknown schema keyword {key!r}")
    if node.get("nullable", False) and "type" in node:
        out["type"] = [node["type"], "null"]
    if "pattern" in out:
        try:
            re.compile(out["pattern"])
        except re.error as err:
            raise ValueError(f"{where}: pattern {out['pattern']!r}: {err}") from err
    if "additionalProperties" not in node:
        if node.get(PRESERVE, False):
            out["additionalProperties"] = True
        elif "properties" in node or node.get("type") == "object":
            out["additionalProperties"] = False
    return out


def wrap(crd: dict[str, Any], version: str, source: str | None = None) -> dict[str, Any]:
    """The JSON Schema of one object of the CRD's kind at ``version``."""
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    upstream = version_schema(crd, version)
    schema = convert(upstream)
    schema["properties"].update(
        apiVersion={"const": f"{group}/{version}"},
        kind={"const": kind},
        metadata=copy.deepcopy(METADATA_SCHEMA),
    )
    wrapper = ["apiVersion", "kind", "metadata", "spec"]
    schema["required"] = wrapper + [r for r in upstream.get("required", []) if r not in wrapper]
    schema["$schema"] = JSON_SCHEMA_DRAFT
    schema["title"] = f"{kind} ({group}/{version})"
    if source:
        schema["$comment"] = f"Generated by import_crd.py from {source}; do not edit."
    return schema


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("crd", type=Path, help="upstream CRD YAML file")
    parser.add_argument("--version", required=True, help="CRD version to take, e.g. v1")
    parser.add_argument("--output", type=Path, help="JSON file to write (default: stdout)")
    parser.add_argument("--source", help="provenance written into $comment (repo, tag, path)")
    args = parser.parse_args(argv)
    text = dumps(wrap(load_crd(args.crd.read_text()), args.version, args.source))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


def object_schemas(schema: Any) -> Iterable[dict[str, Any]]:
    """Every sub-schema describing an object (used by the tests to check closure)."""
    if not isinstance(schema, dict):
        return
    if "properties" in schema or schema.get("type") == "object":
        yield schema
    for sub in schema.get("properties", {}).values():
        yield from object_schemas(sub)
    for key in ("items", "additionalProperties", "not"):
        yield from object_schemas(schema.get(key))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            yield from object_schemas(sub)


if __name__ == "__main__":
    raise SystemExit(main())
