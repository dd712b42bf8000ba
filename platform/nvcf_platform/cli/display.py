"""What `nvcf-sidecar function` prints: tables of functions, versions and GPU specifications.

Answers go to stdout (as tables, or as the API's JSON with `--json`); notes go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence

from nvcf_platform.cli.api_client import JsonObject

__all__ = [
    "health_line",
    "note",
    "print_deployment",
    "print_function",
    "print_functions",
    "print_json",
    "print_specifications",
]


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    for line in lines:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def _print_fields(fields: Iterable[tuple[str, object]]) -> None:
    present = [(label, value) for label, value in fields if value not in (None, "", [])]
    width = max((len(label) for label, _ in present), default=0)
    for label, value in present:
        print(f"{label.ljust(width)}  {value}")


def print_functions(answer: JsonObject, *, as_json: bool) -> None:
    if as_json:
        print_json(answer)
        return
    functions = [f for f in answer.get("functions") or [] if isinstance(f, dict)]
    _print_table(
        ("FUNCTION ID", "VERSION ID", "NAME", "STATUS"),
        ([str(f.get(key, "")) for key in ("id", "versionId", "name", "status")] for f in functions),
    )


def print_function(function: JsonObject) -> None:
    models = function.get("models") or []
    health = function.get("health")
    port = function.get("inferencePort")
    _print_fields(
        (
            ("function id", function.get("id")),
            ("version id", function.get("versionId")),
            ("name", function.get("name")),
            ("status", function.get("status")),
            ("image", function.get("containerImage")),
            ("models", ", ".join(f"{m.get('name')}:{m.get('version')}" for m in models)),
            ("helm chart", function.get("helmChart")),
            (
                "inference URL",
                f"{function.get('inferenceUrl')}" + (f" (port {port})" if port else ""),
            ),
            ("health", _health_check(health) if isinstance(health, dict) else None),
            ("function type", function.get("functionType")),
            ("API body format", function.get("apiBodyFormat")),
            ("description", function.get("description")),
            ("tags", ", ".join(str(tag) for tag in function.get("tags") or [])),
            ("created at", function.get("createdAt")),
        )
    )


def _health_check(health: JsonObject) -> str:
    return (
        f"{health.get('protocol')} {health.get('uri')} on port {health.get('port')}, "
        f"expect {health.get('expectedStatusCode')} within {health.get('timeout')}"
    )


def print_deployment(deployment: JsonObject) -> None:
    _print_fields(
        (
            ("deployment id", deployment.get("deploymentId")),
            ("function id", deployment.get("functionId")),
            ("version id", deployment.get("functionVersionId")),
            ("status", deployment.get("functionStatus")),
        )
    )
    specs = [s for s in deployment.get("deploymentSpecifications") or [] if isinstance(s, dict)]
    print()
    print_specifications(specs)
    health = deployment.get("healthInfo")
    if isinstance(health, list) and health:
        print("\nhealth:")
        for entry in health:
            print(f"  {health_line(entry)}")


def print_specifications(specs: list[JsonObject]) -> None:
    headers = ["GPU SPECIFICATION ID", "GPU", "INSTANCE TYPE", "MIN", "MAX", "CONCURRENCY"]
    with_instances = any("instances" in spec for spec in specs)
    if with_instances:
        headers.append("INSTANCES")
    rows = []
    for spec in specs:
        row = [
            str(spec.get(key, ""))
            for key in (
                "gpuSpecificationId",
                "gpu",
                "instanceType",
                "minInstances",
                "maxInstances",
                "maxRequestConcurrency",
            )
        ]
        if with_instances:
            row.append(_instances(spec.get("instances")))
        rows.append(row)
    _print_table(headers, rows)


def _instances(value: object) -> str:
    """The platform's per-spec instance counts: `{"running": 1, ...}` or a number."""
    if isinstance(value, dict):
        return ", ".join(f"{key} {count}" for key, count in value.items())
    if isinstance(value, list):
        return str(len(value))
    return "" if value is None else str(value)


def health_line(entry: object) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    where = " ".join(
        str(entry[key]) for key in ("gpu", "instanceType", "backend") if entry.get(key)
    )
    return f"{where}: {entry.get('error', '')}" if where else str(entry.get("error", entry))
