"""The one writer of run folders: claimed by one process, checked before any work, written atomically.

Every tool that leaves results behind (evaluation, sweeps, training, the demo's outputs) goes
through ``RunFolder``:

* ``check``: before any model is built, the folder is writable and holds none of the files the
  run will write (``overwrite=true`` allows replacing them; a resumed run owns its files);
* ``claim``: a marker file, created complete or not at all (written beside it, then hard-linked
  to its name, which fails if it exists), holds the process id and host, so a second process
  writing into the same folder is refused in one line (a marker left by a dead process on this
  host, or an empty one, is taken over, in one line); the check is repeated under the claim;
* ``write_*``: every file goes through the one writer (``files.atomic_file``): written under a
  temporary name and renamed, so an interrupted or failed write never leaves half a file, with
  the mode the umask gives; a full disk or a read-only file system is one line naming the file;
* ``release``: the marker goes; after a failure, a folder the run created and left empty goes too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from ...files import atomic_file, check_output_dir, write_atomic, write_error
from .signals import deferred

log = logging.getLogger(__name__)

MARKER = ".in_use"  # in a claimed run folder: "<pid> <host> <start time> <command>"
RESULT_FILES = ("config.yaml", "results.json", "results.csv")  # what an evaluation run writes
METRICS = "metrics.jsonl"  # a training run's curves: one JSON object per iteration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    """Remove a file, a link or a folder tree (a link to a folder goes, not what it points to)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def existing_files(folder: str, names: Iterable[str]) -> list[str]:
    """The entries of ``names`` (files or folders, relative to ``folder``) that exist."""
    return [n for n in names if os.path.lexists(os.path.join(folder, n))]


def refuse_existing(paths: Sequence[str], key: str, what: str) -> None:
    """A ``FileExistsError`` naming the first of ``paths`` that exist (``overwrite=true`` replaces them)."""
    found = [p for p in paths if os.path.lexists(p)]
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise FileExistsError(f"{key}: {what} would replace {', '.join(found[:3])}{more}: choose another folder or "
                              "set overwrite=true")


def write_claim(marker: str) -> None:
    """Create ``marker`` holding "<pid> <host> <start time> <command>", complete or not at all (the
    one writer's exclusive mode): ``FileExistsError`` if it exists; a full disk leaves nothing."""
    text = f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(sys.argv)[:500]}\n"
    with atomic_file(marker, binary=False, exclusive=True) as f:
        f.write(text)


def read_claim(marker: str) -> tuple[str, str, str] | None:
    """(pid, host, start time) of a claim marker, ("", "?", "?") for an empty or unreadable one,
    None once it is gone. An empty marker younger than a second is read again after one (a
    writer of an older version may be about to fill it)."""
    for attempt in range(2):
        try:
            with open(marker, encoding="utf-8", errors="replace") as f:
                text = f.read()
            age = time.time() - os.path.getmtime(marker)
        except FileNotFoundError:
            return None
        except OSError:
            text, age = "", 1e9
        if text.strip() or attempt or age > 1:
            break
        time.sleep(1)
    pid, host, since, *_ = (text.split(" ", 3) + [""] * 4)[:4]
    return (pid, host or "?", since or "?") if pid.strip() else ("", "?", "?")


def remove_claim(marker: str, claim: tuple[str, str, str]) -> bool:
    """Remove the stale claim ``marker`` (read as ``claim``) unless another process took the folder
    over meanwhile: the marker is first renamed to a name of this process's own (atomic), then
    checked; a fresh claim moved by mistake is put back. True when this process removed it."""
    aside = f"{marker}.stale.{os.getpid()}"
    try:
        os.rename(marker, aside)
    except FileNotFoundError:
        return False
    if read_claim(aside) == claim:
        os.remove(aside)
        return True
    with contextlib.suppress(OSError):  # another process's new claim: back where it was
        os.link(aside, marker)
        os.remove(aside)
    return False


class RunFolder:
    """A run folder and the files a run writes there.

    Args:
        path: the folder.
        files: what the run writes, relative to ``path`` (files or folders).
        key: the config key naming the folder, for messages (``output``, ``train.output``).
        overwrite: the run may replace those files.
        resume: the run continues its own earlier run there (its files are its own).
    """

    def __init__(self, path: str, files: Sequence[str], *, key: str, overwrite: bool = False,
                 resume: bool = False) -> None:
        self.path, self.files, self.key = str(path), list(files), key
        self.overwrite, self.resume = overwrite, resume
        self._created = False
        self._claimed = False
        self.written: list[str] = []  # what this process wrote here (``discard`` removes it)

    def check(self) -> RunFolder:
        """Raise unless the run may write here (see the module docstring); creates nothing."""
        check_output_dir(self.path, self.key)
        if not (self.overwrite or self.resume):
            refuse_existing([os.path.join(self.path, f) for f in self.files], f"{self.key}={self.path}", "this run")
        return self

    def claim(self) -> RunFolder:
        """Make the folder and take it for this process (a second writer is refused), then ``check``.
        A signal waits until the claim is made or refused (``signals.deferred``)."""
        self.check()
        with deferred():
            self._claim()
        return self

    def _claim(self) -> None:
        self._created = not os.path.isdir(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise write_error(e, self.path) from None
        marker = os.path.join(self.path, MARKER)
        for _ in range(3):
            try:
                write_claim(marker)
                break
            except FileExistsError:
                self._take_over_stale(marker)
            except BaseException:
                self.release(failed=True)  # nothing claimed: a folder made here goes again
                raise
        else:
            raise FileExistsError(f"{self.key}={self.path}: cannot claim the folder ({marker} keeps reappearing)")
        self._claimed = True
        try:
            self.check()  # again, now that no other process can write here
        except BaseException:
            self.release(failed=True)
            raise

    def _take_over_stale(self, marker: str) -> None:
        """Take ``marker`` over if its process has ended (a process of this host that is gone, or
        an empty claim: one whose writer stopped before it could say who it was, on a full disk
        or in an older version), saying so in one line; else refuse in one line."""
        claim = read_claim(marker)
        if claim is None:  # gone meanwhile: claim again
            return
        pid, host, since = claim
        if not pid:
            why = "an empty claim (its writer stopped before it said who it was: a full disk?)"
        elif host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            why = f"a claim by process {pid}, which has ended"
        else:
            raise FileExistsError(f"{self.key}={self.path} is being written by process {pid} on {host} (since "
                                  f"{since}): choose another folder, or remove {marker} if that process is gone")
        if remove_claim(marker, claim):
            log.warning("%s: taking over %s: %s", self.path, MARKER, why)

    def release(self, failed: bool = False, discard: bool = False) -> None:
        """Give the folder up; ``discard``: first remove what this process wrote (a run that failed
        before it had anything worth keeping); after a failure, remove the folder if this run
        created it and it is empty. A signal waits until this is done (after a failure it is
        dropped: the process is stopping already), so no half-removed run blocks the next one."""
        with deferred(deliver=not failed):
            if discard:
                for name in reversed(self.written):
                    _remove(self.file(name))
                self.written.clear()
            if self._claimed:
                marker = os.path.join(self.path, MARKER)
                if os.path.isfile(marker):
                    os.remove(marker)
                self._claimed = False
            if failed and self._created and os.path.isdir(self.path) and not os.listdir(self.path):
                os.rmdir(self.path)

    def __enter__(self) -> RunFolder:
        return self.claim()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def clear(self) -> None:
        """Remove this run's earlier files (``overwrite=true``, before the run writes anew)."""
        for name in existing_files(self.path, self.files):
            _remove(self.file(name))

    def record(self, name: str) -> str:
        """Note that this process writes ``name`` (a file it opens itself, such as a log); returns its path."""
        if name not in self.written:
            self.written.append(name)
        return self.file(name)

    def write(self, name: str, write: Callable[[IO], Any], binary: bool = False) -> str:
        """Write ``name`` in the folder through ``write(file)``, atomically; returns its path."""
        return write_atomic(self.record(name), write, binary=binary)

    def write_text(self, name: str, text: str) -> str:
        return self.write(name, lambda f: f.write(text))

    def write_json(self, name: str, obj: Any) -> str:
        return self.write(name, lambda f: json.dump(obj, f, indent=2, allow_nan=False))

    def write_config(self, cfg: Any, name: str = "config.yaml") -> str:
        from omegaconf import OmegaConf

        return self.write_text(name, OmegaConf.to_yaml(OmegaConf.create(cfg), resolve=True))


def claim_all(folders: Sequence[RunFolder]) -> None:
    """Claim every folder, or none (the ones claimed are released when one is refused)."""
    done: list[RunFolder] = []
    try:
        for folder in folders:
            done.append(folder.claim())
    except BaseException:
        for folder in reversed(done):
            folder.release(failed=True)
        raise


def release_all(folders: Sequence[RunFolder], failed: bool) -> None:
    for folder in reversed(list(folders)):
        folder.release(failed=failed)
