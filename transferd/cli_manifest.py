"""Manifests for ``transferd submit``: CSV or JSON lines turned into file specs.

Every error names the manifest, the line and the field, so a user can fix a
list of thousands of files without guessing (``ManifestError``).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from typing import Any

from transferd.cli_exit import UsageError

__all__ = ["ManifestError", "file_spec", "parse_manifest", "read_manifest"]

MANIFEST_FIELDS = ("source", "destination", "size", "checksum")


class ManifestError(UsageError):
    """A manifest line that cannot become a file spec; names the line and the field."""

    def __init__(
        self, name: str, line: int, field: str | None, message: str, *, unit: str = "line"
    ):
        where = f"{name} {unit} {line}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.field = field


def parse_manifest(text: str | Iterable[str], name: str = "manifest") -> list[dict[str, Any]]:
    """File specs from a manifest: CSV with a header, or JSON lines (detected from line one).

    Columns / keys: ``source``, ``destination`` (required), ``size`` (bytes),
    ``checksum`` ("alg:hex" or "alg"); JSON lines may also carry ``metadata``.
    Blank lines and lines starting with ``#`` are skipped.
    """
    lines = text.splitlines() if isinstance(text, str) else [ln.rstrip("\r\n") for ln in text]
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    if not first:
        raise ManifestError(name, 1, None, "the manifest lists no files")
    specs = _parse_jsonl(lines, name) if first.startswith("{") else _parse_csv(lines, name)
    if not specs:
        raise ManifestError(name, len(lines), None, "the manifest lists no files")
    return specs


def _parse_jsonl(lines: list[str], name: str) -> list[dict[str, Any]]:
    allowed = {*MANIFEST_FIELDS, "metadata"}
    specs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(name, number, None, f"not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise ManifestError(name, number, None, "expected a JSON object")
        for key in row:
            if key not in allowed:
                raise ManifestError(name, number, key, f"unknown key (expected {_expected()})")
        specs.append(file_spec(row, name, number))
    return specs


def _parse_csv(lines: list[str], name: str) -> list[dict[str, Any]]:
    # One record per physical line (no quoted newlines), so errors name the line exactly.
    numbered = [(n, next(csv.reader([ln]))) for n, ln in enumerate(lines, start=1)
                if ln.strip() and not ln.lstrip().startswith("#")]
    header_line, raw_header = numbered[0]
    header = [h.strip().lower() for h in raw_header]
    for column in header:
        if column not in MANIFEST_FIELDS:
            raise ManifestError(
                name, header_line, column or "(empty)",
                f"unknown column in the header (expected {_expected()})",
            )
    for column in ("source", "destination"):
        if column not in header:
            raise ManifestError(name, header_line, column, "the header has no such column")
    specs = []
    for number, values in numbered[1:]:
        if len(values) != len(header):
            raise ManifestError(
                name, number, None, f"{len(values)} fields, the header has {len(header)}"
            )
        row = {col: value.strip() for col, value in zip(header, values, strict=True)}
        if row.get("size") == "":
            del row["size"]
        if row.get("checksum") == "":
            del row["checksum"]
        specs.append(file_spec(row, name, number))
    return specs


def _expected() -> str:
    return ", ".join(MANIFEST_FIELDS)


def file_spec(row: dict[str, Any], name: str, number: int, unit: str = "line") -> dict[str, Any]:
    """One checked file spec from a manifest row (or a SRC DST pair: ``unit="pair"``)."""
    from workers.stream.checksums import parse_spec

    spec: dict[str, Any] = {}
    for key in ("source", "destination"):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(name, number, key, "missing (a URL is required)", unit=unit)
        if "://" not in value:
            raise ManifestError(name, number, key, f"not a URL: {value!r}", unit=unit)
        spec[key] = value.strip()
    size = row.get("size")
    if size is not None:
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(name, number, "size", f"not a whole number of bytes: {size!r}")
        spec["size"] = size
    checksum = row.get("checksum")
    if checksum is not None:
        if not isinstance(checksum, str):
            raise ManifestError(name, number, "checksum", "expected \"alg:hex\" or \"alg\"")
        try:
            spec["checksum"] = str(parse_spec(checksum))
        except ValueError as err:
            raise ManifestError(name, number, "checksum", str(err)) from None
    metadata = row.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ManifestError(name, number, "metadata", "expected a JSON object")
        spec["metadata"] = metadata
    return spec


def read_manifest(path: str) -> list[dict[str, Any]]:
    """The file specs of the manifest at ``path`` (``-``: standard input)."""
    if path == "-":
        return parse_manifest(sys.stdin.read(), "stdin")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return parse_manifest(fh.read(), path)
    except OSError as err:
        raise UsageError(f"cannot read manifest {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"manifest {path} is not UTF-8 text") from None
