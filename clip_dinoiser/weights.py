"""Every weights file a command needs, one row each, found before the first one loads.

A row (``Weight``) is the key the user sets, its value (a hub tag, ``released`` or a file), what
it is, the name of its local copy and where it is downloaded from. The models, teachers and
training tools each list their rows (``models.model_weights``, ``teachers.teacher_weights``,
``engine.training.train.run_weights``, ...); the loaders find each file the same way:

1. the value itself, when it names a file;
2. a local copy by its file name in the weights folder: ``$CLIP_DINOISER_WEIGHTS``, else
   ``checkpoints/`` (``checkpoints/last.pt`` is the released heads' copy; a hub tag's copy is
   ``<name>.<tag>`` with any weights suffix: ``ViT-B-16.laion2b_s34b_b88k.safetensors``,
   ``vit_base_patch16_224.dino.safetensors``);
3. the download caches (``released``: ``~/.cache/clip_dinoiser/weights``, checksummed; hub tags:
   the Hugging Face cache);
4. a download, where its server can be reached.

``check_weights`` runs before anything loads and names every file it cannot find, with its key,
in one message. ``tools/weights.py`` lists a tool's rows and downloads them where there is a
network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from . import download
from .download import RELEASED, RELEASED_NAME, cached_released, released_url
from .errors import UserError
from .files import WEIGHT_SUFFIXES, WEIGHTS_ENV, local_copy, looks_like_path, weights_folder

log = logging.getLogger(__name__)

FILE, RELEASED_FILE, OPEN_CLIP, TIMM = "file", "released", "open_clip", "timm"  # Weight.kind
UNKNOWN_SOURCE = "no download address known"  # a hub tag its library does not list (a custom architecture's)


@dataclass(frozen=True)
class Weight:
    """One weights file a command needs.

    Attributes:
        key: the key the user sets (``model.clip.pretrained``, ``teachers.dino.pretrained``,
            ``weights`` in the Python API).
        value: its value: a file, ``released`` or a hub tag.
        what: the file in words (``CLIP checkpoint``, ``teacher weights``).
        kind: ``file``, ``released``, ``open_clip`` (a tag of the open_clip architecture ``arch``)
            or ``timm`` (a timm ``name.tag``).
        arch: the open_clip architecture (``open_clip``), the released file's name in
            ``download.RELEASED`` (``released``).
        url: the download address of a released file (None: the mirror's or the official one).
        alternative: said where a file is missing (``or 'released': the authors' heads``).
    """

    key: str
    value: str
    what: str
    kind: str
    arch: str | None = None
    url: str | None = None
    alternative: str = ""

    @property
    def file(self) -> str | None:
        """The name of its local copy in the weights folder (None for a file given by path). A hub
        tag's copy is ``<name>.<tag>.safetensors``; ``.pt``, ``.pth`` or ``.bin`` are found too."""
        if self.kind == RELEASED_FILE:
            return RELEASED[self.arch].published
        if self.kind == OPEN_CLIP:
            return f"{self.arch}.{self.value}.safetensors"
        return f"{self.value}.safetensors" if self.kind == TIMM else None

    @property
    def source(self) -> str:
        """Where it is downloaded from."""
        if self.kind == RELEASED_FILE:
            return released_url(self.arch, self.url)
        repo = _hub_repo(self)
        if repo is not None:
            from huggingface_hub import constants

            return f"{constants.ENDPOINT.rstrip('/')}/{repo[0]}"
        return "" if self.kind == FILE else f"{UNKNOWN_SOURCE} for {self.value}"

    def local(self) -> str | None:
        """The file to load without a download: the value when it names a file, else the local
        copy in the weights folder (None: none of them)."""
        if self.kind == FILE:
            return self.value if os.path.isfile(self.value) else None
        return local_copy(self.file if self.kind == RELEASED_FILE else self.file.removesuffix(".safetensors"))

    def cached(self) -> str | None:
        """Its download in a cache (ours for ``released``, Hugging Face's for hub tags), or None."""
        if self.kind == RELEASED_FILE:
            return cached_released(self.arch)
        repo = _hub_repo(self)
        if repo is not None:
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError:
                return None
            for name in repo[1]:
                path = try_to_load_from_cache(repo[0], name)
                if isinstance(path, str) and os.path.isfile(path):
                    return path
        return None

    def described(self) -> str:
        """``key=value``: what it is, its local copy's name, where it comes from (for messages)."""
        if self.kind == FILE:
            kind = "is a folder" if os.path.isdir(self.value) else "not found"
            return f"{self.what} {kind}: {self.value} ({self.key}{'; ' + self.alternative if self.alternative else ''})"
        return f"{self.key}={self.value} ({self.what}: {self.file} from {self.source})"


def _hub_repo(w: Weight) -> tuple[str, tuple[str, ...]] | None:
    """(Hugging Face repository, its file names to try) of a hub tag, or None where the tag is unknown."""
    try:
        if w.kind == OPEN_CLIP:
            from open_clip.pretrained import get_pretrained_cfg

            hub = (get_pretrained_cfg(w.arch, w.value) or {}).get("hf_hub", "")
            if not hub:
                return None
            if hub.endswith("/"):  # open_clip's convention: a repository, its default file names
                return hub.rstrip("/"), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
            repo, name = os.path.split(hub)
            return repo, (name,)
        if w.kind == TIMM:
            import timm

            cfg = timm.models.get_pretrained_cfg(w.value)
            hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
            if hub_id:
                named = getattr(cfg, "hf_hub_filename", None)
                return hub_id, ((named,) if named else ("model.safetensors", "pytorch_model.bin"))
    except (ImportError, RuntimeError, ValueError):  # an unknown architecture or tag
        return None
    return None


def looks_like_file(value: str) -> bool:
    """A value that names a file (``files.looks_like_path``, or an existing file), not a hub tag."""
    return looks_like_path(value) or os.path.isfile(value)


def clip_weight(name: str, pretrained: str | None, key: str) -> Weight | None:
    """CLIP's row: ``pretrained`` is an open_clip tag of the architecture ``name`` or a file (None: random)."""
    if not pretrained:
        return None
    if looks_like_file(pretrained):
        return Weight(key, pretrained, "CLIP checkpoint", FILE)
    arch = os.path.splitext(os.path.basename(name))[0] if name.endswith(".json") else name
    return Weight(key, pretrained, f"CLIP {arch} weights", OPEN_CLIP, arch=arch)


def timm_weight(pretrained: str | None, key: str, what: str) -> Weight | None:
    """A timm model's row: ``pretrained`` is a timm ``name.tag`` or a file (None: random)."""
    if not pretrained:
        return None
    return Weight(key, pretrained, what, FILE if looks_like_file(pretrained) else TIMM)


def released_weight(value: str | None, which: str, key: str, what: str, url: str | None = None) -> Weight | None:
    """A row that may be ``released`` (``download.RELEASED[which]``) or a file (None: not needed)."""
    if not value:
        return None
    alternative = f"or '{RELEASED_NAME}': the published {RELEASED[which].what}"
    if value == RELEASED_NAME:
        return Weight(key, value, RELEASED[which].what, RELEASED_FILE, arch=which, url=url)
    return Weight(key, value, what, FILE, alternative=alternative)


def file_weight(value: str | None, key: str, what: str) -> Weight | None:
    """A row that is always a file (None: not needed)."""
    return Weight(key, value, what, FILE) if value else None


def local_or_value(w: Weight | None) -> str | None:
    """What a loader loads: the local file of ``w`` (``Weight.local``), else its value (a hub
    tag, which the loader downloads or finds in the hub's cache)."""
    if w is None:
        return None
    path = w.local()
    if path is not None and path != w.value:
        log.info("%s=%s: local copy %s", w.key, w.value, path)
    return path or w.value


# How a row was found (``locate_weights``).
GIVEN, COPY, CACHED, DOWNLOAD, MISSING = "the file given", "local copy", "download cache", "to download", "missing"


def locate_weights(weights: Sequence[Weight | None]) -> list[tuple[Weight, str | None, str]]:
    """(row, its file or None, how it was found) for every row: ``GIVEN`` (the value is the file),
    ``COPY`` (in the weights folder), ``CACHED`` (a download cache), ``DOWNLOAD`` (not here, its
    server answers: the loader downloads it) or ``MISSING``. Loads nothing; each server is asked once."""
    servers: dict[str, bool] = {}
    located = []
    for w in (w for w in weights if w is not None):
        path = w.local()
        if path is not None:
            located.append((w, path, GIVEN if path == w.value else COPY))
            continue
        path = None if w.kind == FILE else w.cached()
        if path is not None:
            located.append((w, path, CACHED))
            continue
        if w.kind == FILE or w.source.startswith(UNKNOWN_SOURCE):
            located.append((w, None, MISSING))
            continue
        server = "hub" if w.kind != RELEASED_FILE else w.source
        if server not in servers:
            servers[server] = _hub_online() if server == "hub" else download.url_reachable(server)
        located.append((w, None, DOWNLOAD if servers[server] else MISSING))
    return located


def check_weights(weights: Sequence[Weight | None]) -> None:
    """Every row found before any loads (``locate_weights``): a file, a local copy, a cached
    download, or a download whose server answers.

    Raises:
        FileNotFoundError: files given by path are missing (each named with its key).
        UserError: besides those, files that no server can give (offline), each with its key,
            its local copy's name and its source, all in one message.
    """
    missing = [w for w, _, how in locate_weights(weights) if how == MISSING]
    if missing:
        raise missing_error(missing)


def missing_error(missing: Sequence[Weight]) -> Exception:
    """The one-line error naming every row of ``missing``: files given by path first (as the
    readers name them), then the rows to put in the weights folder, by name."""
    problems = [w.described() for w in missing if w.kind == FILE]
    absent = [w for w in missing if w.kind != FILE]
    if not absent:
        return FileNotFoundError("; ".join(problems))
    many = len(absent) > 1
    down = sorted({_host(w.source) for w in absent if "://" in w.source})
    offline = f" ({', '.join(down)} cannot be reached)" if down else ""
    problems.append(f"cannot find {len(absent)} weights file{'s' if many else ''}{offline}: "
                    f"{'; '.join(w.described() for w in absent)}. Put {'them' if many else 'it'} in "
                    f"{weights_folder().rstrip(os.sep)}{os.sep} under {'those names' if many else 'that name'} "
                    f"({WEIGHTS_ENV} names another folder) or give {'each key' if many else 'the key'} a local file; "
                    "python tools/weights.py lists what each tool needs")
    return UserError("; ".join(problems))


def keep_copy(w: Weight, path: str) -> str:
    """``path`` (``w``'s download) also in the weights folder under ``w``'s local name (its own
    weights suffix kept), hard-linked where the file system allows, else copied; returns the copy."""
    import shutil

    name = w.file if w.kind == RELEASED_FILE else w.file.removesuffix(".safetensors")
    if not name.endswith(WEIGHT_SUFFIXES):
        name += os.path.splitext(path)[1] if path.endswith(WEIGHT_SUFFIXES) else ".safetensors"
    copy = os.path.join(weights_folder(), name)
    os.makedirs(weights_folder(), exist_ok=True)
    if not os.path.exists(copy):
        try:
            os.link(os.path.realpath(path), copy)
        except OSError:  # another file system
            shutil.copy2(path, copy)
    return copy


def fetch_weight(w: Weight) -> str:
    """Download ``w`` into its cache (as its loader would: ``released`` files into ours, hub tags
    through open_clip / huggingface_hub into the Hugging Face cache); returns the file."""
    try:
        if w.kind == RELEASED_FILE:
            return download.resolve_released(RELEASED_NAME, w.arch, w.url, key=w.key)
        if w.kind == OPEN_CLIP:
            from open_clip.pretrained import download_pretrained, get_pretrained_cfg

            return download_pretrained(get_pretrained_cfg(w.arch, w.value))
        from huggingface_hub import hf_hub_download

        repo, names = _hub_repo(w)
        for name in names[:-1]:
            try:
                return hf_hub_download(repo, name)
            except Exception:  # the repository has the next name (pytorch_model.bin) instead
                continue
        return hf_hub_download(repo, names[-1])
    except UserError:
        raise
    except Exception as e:  # network, a tag the hub does not have
        raise UserError(f"cannot download {w.key}={w.value} from {w.source}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _hub_online() -> bool:
    """The Hugging Face hub can give files: not in offline mode (``HF_HUB_OFFLINE``) and reachable."""
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE and download.hub_reachable()


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or url
