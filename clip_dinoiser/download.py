"""The authors' released files by name: a local copy, or downloaded once into the cache, checked, reused.

``model.checkpoint=released`` and ``teachers.found.decoder=released`` resolve here: to a copy
under its published name in the weights folder (``checkpoints/last.pt``, ``files.weights_folder``)
when there is one, else to the cached download. Each download is checked against its git blob
id (SHA-1 of ``b"blob <size>\\0" + content``), a checksum anyone can recompute from the public
repository (``git hash-object <file>``). A download is written under a temporary name and
renamed only once its checksum matches, so an interrupted or wrong download never leaves a
file that a later run would load.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType

from tqdm import tqdm

from .errors import UserError
from .files import WriteError, atomic_file, default_cache_dir, local_copy, weights_folder

log = logging.getLogger(__name__)

RELEASED_NAME = "released"
MIRROR_ENV = "CLIP_DINOISER_RELEASES_URL"  # a mirror holding the released files under their cache names (read per call)


@dataclass(frozen=True)
class ReleasedFile:
    """A file published with a paper, and the git blob id that identifies its content."""

    filename: str  # name in the cache folder
    url: str
    git_blob: str
    published: str = ""  # its name where it is published: a local copy's name in the weights folder
    what: str = ""  # in words


RELEASED = MappingProxyType({
    # CLIP-DINOiser heads (Wysoczanska et al., ECCV 2024): checkpoints/last.pt of wysoczanska/clip_dinoiser.
    "heads": ReleasedFile("clip_dinoiser_last.pt",
                          "https://github.com/wysoczanska/clip_dinoiser/raw/HEAD/checkpoints/last.pt",
                          "0b6c94d9c439ebac7bcb07fe805be3654ea03c7f", "last.pt", "CLIP-DINOiser heads"),
    # FOUND's decoder (Simeoni et al., CVPR 2023): data/weights/decoder_weights.pt of valeoai/FOUND (2,689 bytes).
    "found_decoder": ReleasedFile("found_decoder_weights.pt",
                                  "https://github.com/valeoai/FOUND/raw/HEAD/data/weights/decoder_weights.pt",
                                  "c1bd70fa400b55f7d0ec12a9c61b7c26aa2bb71f", "decoder_weights.pt",
                                  "FOUND decoder"),
})


def git_blob_id(path: str) -> str:
    """``git hash-object``: SHA-1 of ``b"blob <size>\\0"`` followed by the file's bytes."""
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, git_blob: str, dest: str, *, progress: bool = True, timeout: float = 30.0,
          key: str | None = None) -> str:
    """``dest``, downloaded from ``url`` unless a copy with the right checksum is there.

    Raises:
        ValueError: the download failed or its checksum is not ``git_blob`` (nothing is kept).
    """
    if os.path.isfile(dest) and git_blob_id(dest) == git_blob:
        return dest
    try:
        with atomic_file(dest, suffix=".part") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            size = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest), disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            if total is not None and size != total:
                raise UserError(f"cannot download {url}: the connection ended after {size} of {total} bytes (file "
                                "not kept)")
            out.flush()
            got = git_blob_id(out.path)
            if got != git_blob:
                raise UserError(f"checksum mismatch for {url}: git blob {got}, expected {git_blob} (file not kept)")
    except WriteError as e:  # a read-only, full or foreign cache folder
        err = WriteError(f"{e}; the download cache is {os.path.dirname(os.path.abspath(dest))}: set XDG_CACHE_HOME "
                         f"to a writable folder, or put the file in the weights folder "
                         f"({weights_folder()}, tools/weights.py --copy)")
        err.errno = e.errno
        raise err from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        hint = f"{key}=<its path>" if key else "its path"
        raise UserError(f"cannot download {url}{f' ({key}=released)' if key else ''}: {reason} (offline? download it "
                        f"by hand and give {hint})") from e
    log.info("downloaded %s to %s", url, dest)
    return dest


def released_url(which: str, url: str | None = None) -> str:
    """Where ``RELEASED[which]`` is downloaded from: ``url``, else the mirror of ``MIRROR_ENV``,
    else the official address."""
    spec = RELEASED[which]
    mirror = os.environ.get(MIRROR_ENV)
    return url or (f"{mirror.rstrip('/')}/{spec.filename}" if mirror else spec.url)


def released_cache(which: str, cache_dir: str | None = None) -> str:
    """The path of ``RELEASED[which]``'s download in the cache (whether it is there or not)."""
    return os.path.join(cache_dir or os.path.join(default_cache_dir(), "weights"), RELEASED[which].filename)


def cached_released(which: str) -> str | None:
    """The checked download of ``RELEASED[which]`` in the cache, or None."""
    path = released_cache(which)
    return path if os.path.isfile(path) and git_blob_id(path) == RELEASED[which].git_blob else None


def released_copy(which: str, key: str | None = None) -> str | None:
    """The local copy of ``RELEASED[which]`` in the weights folder (by its published name), or
    None. A copy whose content is not the released file is used, with a warning."""
    spec = RELEASED[which]
    path = local_copy(spec.published)
    if path is not None and git_blob_id(path) != spec.git_blob:
        log.warning("%s=released: %s is not the released %s (its git blob differs): used as it is", key or which,
                    path, spec.what)
    return path


def resolve_released(value: str | None, which: str, url: str | None = None, cache_dir: str | None = None,
                     key: str | None = None) -> str | None:
    """``value``, or for ``"released"`` the local copy in the weights folder (``released_copy``),
    else the cached (downloaded on first use) file of ``RELEASED[which]``.

    Args:
        url: download address instead of the official one (mirrors, tests); same checksum.
        cache_dir: folder of the downloads (default ``default_cache_dir()/weights``).
    """
    if value != RELEASED_NAME:
        return value
    copy = released_copy(which, key)
    if copy is not None:
        log.info("%s=released: %s", key or which, copy)
        return copy
    return fetch(released_url(which, url), RELEASED[which].git_blob, released_cache(which, cache_dir), key=key)


def hub_address() -> tuple[str, int]:
    """(host, port) of the Hugging Face hub that open_clip and timm download from
    (``HF_ENDPOINT``, default huggingface.co)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    return parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)


def hub_reachable(timeout: float = 2.0) -> bool:
    """A TCP connection to the hub opens within ``timeout`` (assumed true behind a proxy)."""
    return _connects(hub_address(), timeout)


def url_reachable(url: str, timeout: float = 2.0) -> bool:
    """A TCP connection to ``url``'s server opens within ``timeout`` (assumed true behind a proxy;
    a ``file:`` address: the file exists)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "file":
        return os.path.exists(urllib.request.url2pathname(parts.path))
    return _connects((parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)), timeout)


def _connects(address: tuple[str, int], timeout: float) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection(address, timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline_if_unreachable() -> Iterator[bool]:
    """Hugging Face hub offline mode (local cache only) while the hub cannot be reached.

    Unreachable, huggingface_hub retries each request with back-off (about 55 s for one
    open_clip tag); in offline mode a cached file loads at once and a missing one fails at
    once. ``HF_HUB_OFFLINE=1`` is honoured as is. Yields whether offline mode is on.
    """
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    if not previous and not hub_reachable():
        log.info("%s cannot be reached: using the local hub cache only", hub_address()[0])
        constants.HF_HUB_OFFLINE = True
    try:
        yield constants.HF_HUB_OFFLINE
    finally:
        constants.HF_HUB_OFFLINE = previous
