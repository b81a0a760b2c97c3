"""What a training run read, recorded in its folder (``inputs.json``) and checked on resume: a run
resumed after one of its inputs changed would go on with other data than it started with (a
vocabulary file with a fourth class, an image folder with new images), so the resume is refused
in one line naming the file, as a changed setting is.

Each input is identified by what determines what the run reads from it:

* a file the run reads whole (a vocabulary, a split file): its size and the SHA-256 of its bytes;
* a list of files it reads one by one (the training images, the label files): their paths
  relative to their common folder, their number and their sizes, hashed together (an added,
  removed, renamed or replaced image changes it; a copy of the folder with new modification
  times does not).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from ...errors import UserError
from ...readers import read_json

log = logging.getLogger(__name__)

INPUTS = "inputs.json"  # in a training run folder: {key: {path, kind, size, digest, count}}


@dataclass(frozen=True)
class Input:
    """What identifies one input of a run.

    Attributes:
        path: the file, or the folder of a list of files.
        kind: ``file`` or ``files``.
        size: bytes (``file``), or all the files' bytes together (``files``).
        count: the number of files (``files``), 1 for a file.
        digest: SHA-256 of the file's bytes, or of the files' relative paths and sizes.
    """

    path: str
    kind: str
    size: int
    count: int
    digest: str

    def differs(self, old: Input) -> str:
        """How this input differs from ``old`` (the recorded one), in words; "" if it does not."""
        if self.digest == old.digest and self.kind == old.kind:
            return ""
        if self.kind == "files" and old.kind == "files" and self.count != old.count:
            return f"{old.count} files then, {self.count} now"
        if self.size != old.size:
            return f"{old.size} bytes then, {self.size} now"
        return "its content differs" if self.kind == "file" else "files renamed or replaced"


def file_input(path: str) -> Input:
    """A file read whole: its size and the SHA-256 of its bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return Input(path, "file", os.path.getsize(path), 1, h.hexdigest())


def files_input(paths: Sequence[str]) -> Input:
    """A list of files read one by one: their relative paths and sizes (not their bytes: a
    training set of a million images is identified in the time its folder takes to list)."""
    folder = os.path.commonpath([os.path.abspath(p) for p in paths]) if paths else ""
    if len(paths) == 1:
        folder = os.path.dirname(folder)
    h, total = hashlib.sha256(), 0
    for p in paths:
        size = os.path.getsize(p)
        total += size
        h.update(f"{os.path.relpath(os.path.abspath(p), folder)}\t{size}\n".encode())
    return Input(folder, "files", total, len(paths), h.hexdigest())


def record_inputs(write_json, inputs: Mapping[str, Input]) -> None:
    """Write ``inputs`` (key -> ``Input``) as ``inputs.json`` with the run folder's writer
    (``RunFolder.write_json``)."""
    write_json(INPUTS, {key: asdict(value) for key, value in inputs.items()})


def check_inputs(run_dir: str, inputs: Mapping[str, Input]) -> list[str]:
    """Refuse (one line naming the file and its key) to resume ``run_dir`` when an input differs
    from what the run recorded when it started. Returns the keys the run has no record of (a run
    made before inputs were recorded: those are recorded now, unchecked)."""
    path = os.path.join(run_dir, INPUTS)
    if not os.path.isfile(path):
        return list(inputs)
    recorded = read_json(path, "record of the run's inputs")
    if not isinstance(recorded, dict):
        raise UserError(f"record of the run's inputs {path} is not a mapping: restore it, or start a new run")
    unknown = []
    for key, now in inputs.items():
        entry = recorded.get(key)
        if entry is None:
            unknown.append(key)
            continue
        try:
            then = Input(**entry)
        except TypeError:
            raise UserError(f"record of the run's inputs {path}: the entry of {key} is not readable") from None
        change = now.differs(then)
        if change:
            what = "image list" if now.kind == "files" else "file"
            raise UserError(f"resuming {run_dir}: the {what} {now.path} ({key}) changed since the run started "
                            f"({change}); a resumed run reads what it started with: restore it, or start a new run")
    return unknown
