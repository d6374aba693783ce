"""JSON Lines event manifests, read line by line the same way by ingest and by ``device-run``.

A manifest line is one event object; a line that is not one (not UTF-8, not JSON, not an
object) is reported with the reason, never skipped silently. Blank lines are formatting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class ManifestLine:
    number: int  # 1-based line number in the file
    text: str  # the line without its line break (undecodable bytes replaced)
    record: dict[str, Any] | None  # the event object, or None when the line is not one
    error: str | None = None  # why the line is not an event object


def read_manifest(path: str) -> Iterator[ManifestLine]:
    """Every non-blank line of the manifest at ``path``, in order."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield ManifestLine(
                    number, raw.decode("utf-8", errors="replace").rstrip("\r\n"), None, f"not UTF-8: {e}"
                )
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield ManifestLine(number, text, None, f"not JSON: {e.msg} at column {e.colno}")
                continue
            except (RecursionError, ValueError) as e:  # nesting past the parser's limit, huge integers
                yield ManifestLine(number, text, None, f"not usable JSON: {type(e).__name__}")
                continue
            if not isinstance(record, dict):
                yield ManifestLine(number, text, None, "a JSON value that is not an object")
                continue
            yield ManifestLine(number, text, record)
