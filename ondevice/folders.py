"""Image-folder trees of events, read the same way by ingest and by ``device-run`` (no TensorFlow).

``<label>/<event_id>/<frame>.png`` is one event of several frames (in file-name order),
``<label>/<name>.jpg`` one event of one frame. Whatever lies outside that layout is returned with
the reason it is not read, so the caller can report it: nothing is skipped silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FOLDER_EVENT, FOLDER_IMAGE = "folder_event", "folder_image"

IGNORED_TOP_LEVEL = "file at the top of an image-folder tree (images go under <label>/)"
IGNORED_NESTED = "directory inside an event folder (<label>/<event_id>/ holds frame images only)"
IGNORED_NOT_IMAGE = "not an image (.png/.jpg/.jpeg) in an image-folder tree"


@dataclass(frozen=True)
class FolderEvent:
    kind: str  # FOLDER_EVENT (a directory of frames) | FOLDER_IMAGE (one image)
    path: str
    label: str

    @property
    def event_id(self) -> str:
        name = os.path.basename(self.path)
        return name if self.kind == FOLDER_EVENT else os.path.splitext(name)[0]

    def frame_paths(self) -> list[str]:
        """The event's frames, in file-name order."""
        if self.kind == FOLDER_IMAGE:
            return [self.path]
        names = sorted(f for f in os.listdir(self.path) if is_image(f) and not f.startswith("."))
        return [os.path.join(self.path, f) for f in names]


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_tree(root: str) -> tuple[list[FolderEvent], list[tuple[str, str]]]:
    """The events of the tree at ``root`` (sorted) and every entry not read, as (path relative to
    ``root``, reason). Hidden entries are the caller's to report."""
    events: list[FolderEvent] = []
    ignored: list[tuple[str, str]] = []

    def rel(path: str) -> str:
        return os.path.relpath(path, root)

    for label in sorted(os.listdir(root)):
        label_dir = os.path.join(root, label)
        if label.startswith("."):
            continue
        if not os.path.isdir(label_dir):
            ignored.append((label, IGNORED_TOP_LEVEL))
            continue
        for name in sorted(os.listdir(label_dir)):
            path = os.path.join(label_dir, name)
            if name.startswith("."):
                continue
            if os.path.isdir(path):
                events.append(FolderEvent(FOLDER_EVENT, path, label))
                for inner in sorted(os.listdir(path)):
                    inner_path = os.path.join(path, inner)
                    if inner.startswith("."):
                        continue
                    if os.path.isdir(inner_path):
                        ignored.append((rel(inner_path), IGNORED_NESTED))
                    elif not is_image(inner):
                        ignored.append((rel(inner_path), IGNORED_NOT_IMAGE))
            elif is_image(name):
                events.append(FolderEvent(FOLDER_IMAGE, path, label))
            else:
                ignored.append((rel(path), IGNORED_NOT_IMAGE))
    return events, ignored
