"""Checks on the files and folders a run names, done before any model is built, and the one
writer of files (``atomic_file``, ``write_atomic``, ``append_atomic``).

Every tool validates its paths first, so a typo costs a second, not a model load. Every file a
run writes goes through the writer: complete or absent (written under a temporary name and
renamed, appends cut back on failure), with the mode the umask gives any other file, and a full
disk, a quota or a read-only file system is one line naming the file (``WriteError``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import IO, Any

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
WEIGHTS_ENV = "CLIP_DINOISER_WEIGHTS"  # the folder of local weight copies (read per call)
WEIGHTS_FOLDER = "checkpoints"  # ... when WEIGHTS_ENV is not set (relative to the working folder)


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/clip_dinoiser``, else ``~/.cache/clip_dinoiser`` (read when called)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "clip_dinoiser")


def weights_folder() -> str:
    """The folder where the tools look for local copies of weights by file name:
    ``$CLIP_DINOISER_WEIGHTS``, else ``checkpoints`` (read when called)."""
    return os.path.expanduser(os.environ.get(WEIGHTS_ENV) or WEIGHTS_FOLDER)


def local_copy(name: str) -> str | None:
    """The file ``name`` in ``weights_folder()``, or None. A name without a weights suffix
    (``vit_base_patch16_224.dino``) matches that name with any of ``WEIGHT_SUFFIXES``."""
    folder = weights_folder()
    names = [name] if name.endswith(WEIGHT_SUFFIXES) else [name + suffix for suffix in WEIGHT_SUFFIXES]
    for candidate in names:
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def looks_like_path(value: str | None) -> bool:
    """True for a local file name (a folder separator or a weights suffix); False for hub tags
    such as ``laion2b_s34b_b88k`` or ``vit_base_patch16_224.dino``."""
    return bool(value) and (os.sep in value or value.endswith(WEIGHT_SUFFIXES))


def check_local_file(value: str | None, what: str, key: str) -> None:
    """Raise ``FileNotFoundError`` naming ``key`` when ``value`` names a local file that is missing.

    Hub tags and empty values pass (they are resolved, or refused, by the loader)."""
    if looks_like_path(value) and not os.path.isfile(value):
        kind = "is a folder" if os.path.isdir(value) else "not found"
        raise FileNotFoundError(f"{what} {kind}: {value} ({key})")


def check_output_dir(path: str, key: str) -> None:
    """Raise unless ``path`` is, or can be created as, a writable folder. Creates nothing.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a file, or a symbolic link to
            nothing (dangling) or to itself (a loop).
        PermissionError: the folder (or its nearest existing parent) is not writable.
    """
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if os.path.islink(probe) and not os.path.exists(probe):
        raise NotADirectoryError(f"{key}={path}: {broken_link(probe)}")
    if not os.path.isdir(probe):
        raise NotADirectoryError(f"{key}={path}: {probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            raise PermissionError(f"{key}={path}: folder {probe} is on a read-only file system (write elsewhere)")
        raise PermissionError(f"{key}={path}: folder {probe} is not writable")


def check_output_file(path: str, key: str, *, overwrite: bool, example: str) -> None:
    """Raise unless ``path`` can be written as a new file (or replaced, with ``overwrite``):
    its folder exists and is writable (``check_output_dir``), and it is no folder.

    Args:
        key: the option that names it (``--json``), for the message.
        example: a file name to suggest where ``path`` is a folder (``bench.json``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    check_output_dir(folder, key)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{key} {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{key} {path} is a folder: give a file name, e.g. {path}/{example}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{key} {path} exists: add --overwrite to replace it, or give another name")


def broken_link(path: str) -> str:
    """What is wrong with the symbolic link ``path`` that leads nowhere, and what to do."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop ({path} -> {os.readlink(path)} -> ...): remove the link"
    return (f"{path} is a symbolic link to {os.readlink(path)}, which does not exist: remove the link, or create "
            "the folder it points to")


# ---------------------------------------------------------------- the one writer of files

# Why a write failed, in words, and what to do (the errno of the OSError).
WRITE_CAUSES = MappingProxyType({
    errno.ENOSPC: "no space left on device (free some space, or write elsewhere)",
    errno.EDQUOT: "disk quota exceeded (free some of your space, or write elsewhere)",
    errno.EROFS: "read-only file system (write elsewhere)",
    errno.EACCES: "permission denied (write elsewhere, or ask for write access)",
    errno.EPERM: "operation not permitted (write elsewhere, or ask for write access)",
    errno.EFBIG: "file too large for this file system (write elsewhere)",
    errno.EIO: "input/output error (the disk or the network file system failed)",
})


class WriteError(OSError):
    """A file could not be written: the message names it and the cause (a full disk, a quota, a
    read-only file system, ...); nothing half-written was left under its name. ``errno`` is the
    cause's."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


def write_error(e: OSError, path: str) -> WriteError:
    """``e`` (raised while writing ``path``) as a one-line ``WriteError`` naming ``path`` and the cause."""
    if isinstance(e, WriteError):
        return e
    cause = WRITE_CAUSES.get(e.errno) or (e.strerror or str(e) or type(e).__name__).lower()
    err = WriteError(f"cannot write {path}: {cause}")
    err.errno, err.filename = e.errno, path
    return err


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask (read per call)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:  # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


class _Recorded:
    """A file whose ``write`` / ``flush`` keep the first ``OSError`` they raise: writers such as
    ``torch.save`` replace it with their own error (``RuntimeError: [enforce fail at
    inline_container.cc]``), which names neither the file nor the cause."""

    def __init__(self, file: IO, path: str) -> None:
        self._file, self.error = file, None
        self.path = path  # the temporary file (renamed when the block ends)

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        try:
            return self._file.flush()
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def _disk_error(e: BaseException, recorded: _Recorded | None) -> OSError | None:
    """The file system's error behind ``e``, raised while writing: the one the file recorded, or,
    for another kind of error (``torch.save``'s ``RuntimeError``), one of the file system's in its
    chain of causes. An ``OSError`` the writer raised about something else is not ours to rename."""
    if recorded is not None and recorded.error is not None:
        return recorded.error
    if isinstance(e, OSError):
        return None
    for _ in range(8):
        e = e.__cause__ or e.__context__
        if e is None:
            return None
        if isinstance(e, OSError) and e.errno in WRITE_CAUSES:
            return e
    return None


@contextlib.contextmanager
def atomic_file(path: str, *, binary: bool = True, exclusive: bool = False, suffix: str = ".tmp") -> Iterator[IO]:
    """A new file for ``path``: written under a temporary name beside it (mode: ``file_mode()``,
    as any file the user makes), renamed to ``path`` when the block ends without an error.
    ``exclusive``: ``path`` must not exist (``FileExistsError``; the claim of a run folder).

    Whatever happens (an error, Ctrl-C, a full disk), ``path`` is either untouched or complete,
    and the temporary file is gone. A failure of the file system (full disk, quota, read-only,
    permissions) is a one-line ``WriteError`` naming ``path`` and the cause."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=suffix)
    except OSError as e:
        if isinstance(e, FileExistsError | NotADirectoryError):
            raise NotADirectoryError(f"cannot write {path}: {folder} is not a folder") from None
        raise write_error(e, path) from None
    try:
        with contextlib.suppress(OSError):  # a file system without modes keeps its own
            os.fchmod(fd, file_mode())
        f = os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"}))
        recorded = _Recorded(f, tmp)
        try:
            yield recorded
        except BaseException as e:
            with contextlib.suppress(OSError):  # the original error wins over one of closing
                f.close()
            cause = _disk_error(e, recorded)
            if cause is not None:
                raise write_error(cause, path) from None
            raise
        try:
            f.close()
            if exclusive:
                _link_exclusive(tmp, path)
            else:
                os.replace(tmp, path)
        except FileExistsError:
            raise
        except OSError as e:
            raise write_error(e, path) from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _link_exclusive(tmp: str, path: str) -> None:
    """``path`` made from ``tmp`` only if it does not exist (``FileExistsError`` otherwise): a hard
    link, atomic on local and network file systems; where links are not supported, an exclusive
    create and a copy (not atomic against a reader, still exclusive against a writer)."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    with open(tmp, "rb") as f:
        data = f.read()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


def write_atomic(path: str, write: Callable[[IO], Any], binary: bool = False) -> str:
    """``write(file)`` into a temporary file beside ``path``, then rename it to ``path``
    (``atomic_file``): an interrupted or failed write (Ctrl-C, kill, full disk) never leaves a
    half-written ``path``; a failure of the file system is a ``WriteError`` naming ``path``."""
    with atomic_file(path, binary=binary) as f:
        write(f)
    return path


def append_atomic(path: str, data: bytes) -> None:
    """Append ``data`` to ``path`` (made if missing, with ``file_mode()``), all of it or nothing:
    a failed or interrupted append is cut back to the file's earlier end, so a log or a
    ``metrics.jsonl`` never ends in half a record. Failures: ``WriteError`` naming ``path``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
    except OSError as e:
        raise write_error(e, path) from None
    try:
        end = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            if isinstance(e, OSError):
                raise write_error(e, path) from None
            raise
    finally:
        os.close(fd)


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` through ``write_atomic``."""
    import torch

    write_atomic(path, lambda f: torch.save(obj, f), binary=True)
