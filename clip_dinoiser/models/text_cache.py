"""Class-name embeddings cached on disk, so a second run with the same prompts skips the text tower.

One file per (CLIP architecture, weights identity, templates, class name). Weights are
identified by their hub tag, or by a local file's path, size and modification time, so a
changed file invalidates its entries. Files are written under a temporary name and renamed:
concurrent processes (torchrun ranks) never read a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..files import default_cache_dir, save_atomic
from ..readers import read_weights

__all__ = ["TextEmbeddingCache", "default_cache_dir", "weights_identity"]

log = logging.getLogger(__name__)


def weights_identity(model_name: str, pretrained: str | None) -> str | None:
    """What determines the text embeddings: the architecture, the weights (hub tag, or a local
    file's path, size and modification time) and the open_clip version (its tokenizer and text
    forward); None for random weights (nothing to cache)."""
    if not pretrained:
        return None
    code = f"open_clip {_open_clip_version()}"
    if os.path.isfile(pretrained):
        st = os.stat(pretrained)
        return f"{model_name}|{code}|file:{os.path.abspath(pretrained)}:{st.st_size}:{st.st_mtime_ns}"
    return f"{model_name}|{code}|tag:{pretrained}"


def _open_clip_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:  # a source checkout
        import open_clip

        return open_clip.__version__


class TextEmbeddingCache:
    """Template-averaged embeddings of single class names (D floats each) in ``folder/text/``.

    Args:
        folder: cache folder (``default_cache_dir()`` for the default).
        identity: ``weights_identity`` of the text tower.
    """

    def __init__(self, folder: str, identity: str) -> None:
        self.folder = os.path.join(os.path.expanduser(folder), "text")
        self.identity = identity

    def _path(self, templates: Sequence[str], name: str) -> str:
        key = json.dumps([self.identity, list(templates), name], ensure_ascii=False)
        return os.path.join(self.folder, hashlib.sha256(key.encode()).hexdigest() + ".pt")

    def get(self, templates: Sequence[str], name: str, dim: int | None = None) -> Tensor | None:
        """The cached embedding of ``name``, or None (absent, unreadable, or not a finite vector
        of ``dim`` floats: such an entry is recomputed, with a warning)."""
        path = self._path(templates, name)
        if not os.path.isfile(path):
            return None
        try:
            entry = read_weights(path, "text-cache entry")
            embedding = entry.get("embedding") if isinstance(entry, dict) else None
            if not isinstance(embedding, Tensor) or embedding.ndim != 1 or (dim is not None and len(embedding) != dim):
                raise ValueError(f"an embedding of shape {tuple(getattr(embedding, 'shape', ()))}, the model's "
                                 f"is ({dim},)")
            if not bool(torch.isfinite(embedding).all()):
                raise ValueError("non-finite values")
            return embedding.float()
        except (UserError, KeyError, TypeError, ValueError) as e:  # recompute it
            log.warning("ignoring text-cache entry %s (%s)", path, str(e).splitlines()[0])
            return None

    def put(self, templates: Sequence[str], name: str, embedding: Tensor) -> None:
        try:
            os.makedirs(self.folder, exist_ok=True)
            save_atomic({"embedding": embedding.detach().cpu().float(), "name": name}, self._path(templates, name))
        except OSError as e:  # a read-only or full cache folder only costs speed
            log.warning("cannot write the text cache in %s (%s)", self.folder, e)
