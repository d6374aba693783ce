"""A model's base path on disk: version directories, the version policy and version labels.

Layout (TF Serving's): ``--model_base_path`` is the directory of version directories,
``<model_base_path>/<version>/`` where ``<version>`` is a positive integer. Other names (a
pusher's temporary ``.tmp-3`` directory, the labels file) are ignored, so a push that writes
elsewhere and renames is picked up only when complete. The pusher writes a model's versions to
``<serving base>/<model_name>/``, so that directory is the model's base path.

Version labels live in ``<model_base_path>/labels.json`` (or ``--version-labels FILE``, or a
config file's ``version_labels``), a JSON object mapping label to version, for example
``{"stable": 3, "canary": 4}``. Labels are re-read on every poll; a label may point only at a
version the policy serves.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from contract.errors import UserError

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
LABELS_FILE = "labels.json"


def validate_model_name(name: str) -> str:
    if not MODEL_NAME_RE.match(name) or name in (".", ".."):
        raise UserError(
            f"model name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def model_dir(serving_base: str, model_name: str) -> str:
    """The pusher's ``<serving base>/<model_name>`` (that model's base path), refusing names or
    symlinks that lead outside ``serving_base``."""
    validate_model_name(model_name)
    base = os.path.realpath(serving_base)
    path = os.path.realpath(os.path.join(base, model_name))
    if os.path.dirname(path) != base and not path.startswith(base + os.sep):
        raise UserError(f"model directory for {model_name!r} resolves outside the base path {base}")
    return path


def validate_label(label: str, where: str) -> str:
    if not LABEL_RE.match(str(label)):
        raise UserError(f"{where}: label {label!r} must start with a letter (letters, digits, . _ -)")
    return label


def check_base_path(model_base_path: str, model_name: str) -> str:
    """``model_base_path`` made absolute; UserError when it is clearly the directory above.

    TF Serving's base path holds the version directories. One that holds none, but holds a
    directory named like the model that does, was meant to be that directory: the server would
    otherwise wait forever answering "Could not find any versions".
    """
    path = os.path.abspath(model_base_path)
    if not os.path.isdir(path):
        raise UserError(f"--model_base_path {model_base_path!r} is not a directory")
    inner = os.path.join(path, model_name)
    if not scan_versions(path) and os.path.isdir(inner):
        raise UserError(
            f"--model_base_path {model_base_path} holds no version directories, but {inner} does: pass "
            f"--model_base_path {inner} (as in TF Serving, the base path is the directory of version "
            "directories, not the directory above it)"
        )
    return path


@dataclass(frozen=True)
class VersionPolicy:
    """``latest`` (the ``count`` highest versions), ``all``, or ``specific`` versions."""

    kind: str
    versions: tuple[int, ...] = ()
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        text = text.strip()
        if text in ("latest", "all"):
            return cls(text)
        if text.startswith("specific:"):
            items = [v.strip() for v in text[len("specific:") :].split(",") if v.strip()]
            if items and all(v.isdigit() and int(v) > 0 for v in items):
                return cls("specific", tuple(sorted({int(v) for v in items})))
        raise UserError(
            f"--version-policy must be latest, all or specific:1,2 (positive versions), got {text!r}"
        )

    def aspired(self, on_disk: list[int]) -> set[int]:
        """Versions that should be loaded, given those present on disk."""
        if not on_disk:
            return set()
        if self.kind == "latest":
            return set(sorted(on_disk)[-self.count :])
        if self.kind == "all":
            return set(on_disk)
        return set(self.versions) & set(on_disk)

    def __str__(self) -> str:
        if self.kind == "latest" and self.count > 1:
            return f"latest:{self.count}"
        return f"specific:{','.join(map(str, self.versions))}" if self.kind == "specific" else self.kind


def scan_versions(directory: str, *, contained: bool = True) -> dict[int, str]:
    """``{version: path}`` of the positive all-digit version directories under ``directory``.

    ``contained``: only those that stay inside ``directory`` (what a server may serve); the
    pusher numbers new versions past every name taken, contained or not.
    """
    out: dict[int, str] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:  # missing, not a directory, unreadable: no versions (yet); the status says so
        return out
    root = os.path.realpath(directory)
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) <= 0:
            continue
        path = os.path.realpath(entry.path)
        if not os.path.isdir(path) or (contained and not path.startswith(root + os.sep)):
            continue  # a symlink out of the model directory is never served
        out[int(entry.name)] = entry.path
    return out


def fingerprint(path: str) -> tuple:
    """Cheap change detector for a version directory (names, sizes, mtimes of its files)."""
    items = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            items.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))


class LabelsError(ValueError):
    """The labels file is not a JSON object of label -> positive version."""


def read_labels(path: str) -> dict[str, int]:
    """Labels from ``path`` ({} if the file does not exist)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LabelsError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise LabelsError(f'{path}: expected an object like {{"stable": 1, "canary": 2}}')
    out = {}
    for label, version in raw.items():
        try:
            validate_label(str(label), path)
        except UserError as e:
            raise LabelsError(str(e)) from e
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise LabelsError(
                f"{path}: label {label!r} must map to a positive integer version, got {version!r}"
            )
        out[str(label)] = version
    return out
