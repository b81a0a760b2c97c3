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

from ..files import default_cache_dir, save_atomic

__all__ = ["TextEmbeddingCache", "default_cache_dir", "weights_identity"]

log = logging.getLogger(__name__)


def weights_identity(model_name: str, pretrained: str | None) -> str | None:
    """What determines the text tower's weights; None for random weights (nothing to cache)."""
    if not pretrained:
        return None
    if os.path.isfile(pretrained):
        st = os.stat(pretrained)
        return f"{model_name}|file:{os.path.abspath(pretrained)}:{st.st_size}:{st.st_mtime_ns}"
    return f"{model_name}|tag:{pretrained}"


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

    def get(self, templates: Sequence[str], name: str) -> Tensor | None:
        path = self._path(templates, name)
        if not os.path.isfile(path):
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)["embedding"]
        except Exception as e:  # unreadable entry: recompute it
            log.warning("ignoring unreadable text-cache entry %s (%s)", path, e)
            return None

    def put(self, templates: Sequence[str], name: str, embedding: Tensor) -> None:
        try:
            os.makedirs(self.folder, exist_ok=True)
            save_atomic({"embedding": embedding.detach().cpu().float(), "name": name}, self._path(templates, name))
        except OSError as e:  # a read-only or full cache folder only costs speed
            log.warning("cannot write the text cache in %s (%s)", self.folder, e)
