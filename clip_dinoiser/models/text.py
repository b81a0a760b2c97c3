"""Text side: vocabularies, prompt-template ensembles and the cached zero-shot classifier."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

Vocabulary = tuple[tuple[str, ...], ...]


def imagenet_templates() -> list[str]:
    """The 80 CLIP ImageNet prompt templates (Radford et al., 2021), as format strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


TEMPLATE_SETS: dict[str, Callable[[], list[str]]] = {
    "imagenet80": imagenet_templates,
    "none": lambda: ["{}"],
}


def parse_vocabulary(names: Sequence[str]) -> Vocabulary:
    """Turn class names into a vocabulary: one tuple of synonyms per class.

    A name may hold comma-separated synonyms (``"tv, tvmonitor, television"``) whose text
    embeddings are averaged.

    Raises:
        ValueError: on an empty list, an empty name or a class listed twice.
    """
    if isinstance(names, str):
        names = [names]
    vocab = []
    for raw in names:
        synonyms = tuple(s.strip() for s in str(raw).split(",") if s.strip())
        if not synonyms:
            raise ValueError(f"empty class name in prompts {list(names)}")
        vocab.append(synonyms)
    if not vocab:
        raise ValueError("the prompt list is empty: give at least one class name")
    seen = set()
    for synonyms in vocab:
        if synonyms[0].lower() in seen:
            raise ValueError(f"class '{synonyms[0]}' is listed twice in the prompts")
        seen.add(synonyms[0].lower())
    return tuple(vocab)


def read_vocabulary_file(path: str) -> Vocabulary:
    """One class per line (synonyms comma-separated); blank lines and ``#`` comments skipped."""
    with open(path, encoding="utf-8") as f:
        lines = [ln.split("#", 1)[0].strip() for ln in f]
    return parse_vocabulary([ln for ln in lines if ln])


@torch.no_grad()
def build_text_classifier(
    encode_text: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    vocabulary: Vocabulary,
    templates: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> Tensor:
    """Template-averaged class embeddings, K x D, L2-normalised.

    Class embedding = normalise(mean over synonyms of mean over templates of
    normalise(encode_text(template.format(synonym)))); for one synonym this is the
    MaskCLIP / CLIP-DINOiser recipe.
    """
    prompts = [t.format(s) for synonyms in vocabulary for s in synonyms for t in templates]
    feats = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[i : i + batch_size]).to(device)
        feats.append(F.normalize(encode_text(tokens).float(), dim=-1))
    feats = torch.cat(feats).view(-1, len(templates), feats[0].shape[-1]).mean(dim=1)
    per_class, start = [], 0
    for synonyms in vocabulary:
        per_class.append(feats[start : start + len(synonyms)].mean(dim=0))
        start += len(synonyms)
    return F.normalize(torch.stack(per_class), dim=-1)


class TextClassifier(nn.Module):
    """Holds CLIP's text tower once and the class embeddings of the current vocabulary.

    Changing the vocabulary re-encodes only the prompts (results are cached per
    vocabulary); the CLIP model is never rebuilt.

    Args:
        clip_model: open_clip model whose ``encode_text`` is used (its image tower may be
            detached, see :func:`split_towers`).
        tokenizer: open_clip tokenizer of that model.
        templates: template-set name (``imagenet80``, ``none``) or a list of format strings.
        cache_size: how many vocabularies to keep encoded.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        *,
        templates: str | Sequence[str] = "imagenet80",
        cache_size: int = 16,
    ) -> None:
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        if isinstance(templates, str):
            if templates not in TEMPLATE_SETS:
                raise ValueError(f"unknown template set '{templates}' (choose from {sorted(TEMPLATE_SETS)})")
            templates = TEMPLATE_SETS[templates]()
        self.templates = list(templates)
        self.cache_size = cache_size
        self._cache: OrderedDict[Vocabulary, Tensor] = OrderedDict()
        self.vocabulary: Vocabulary = ()
        self.register_buffer("embeddings", torch.empty(0), persistent=False)

    def train(self, mode: bool = True) -> TextClassifier:
        return super().train(False)

    @property
    def class_names(self) -> list[str]:
        return [synonyms[0] for synonyms in self.vocabulary]

    def set_vocabulary(self, names: Sequence[str] | Vocabulary) -> None:
        """Encode (or fetch from the cache) the class embeddings of ``names``."""
        vocab = names if _is_vocabulary(names) else parse_vocabulary(names)
        if vocab not in self._cache:
            device = next(self.clip.parameters()).device
            emb = build_text_classifier(self.clip.encode_text, self.tokenizer, vocab, self.templates, device=device)
            self._cache[vocab] = emb.cpu()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(vocab)
        self.vocabulary = vocab
        self.embeddings = self._cache[vocab].to(self.embeddings.device)

    def forward(self, feats: Tensor, temperature: float = 100.0) -> Tensor:
        """Cosine logits times ``temperature``: B x D x h x w -> B x K x h x w (fp32)."""
        if not self.vocabulary:
            raise RuntimeError("no vocabulary set: call set_vocabulary(class_names) first")
        feats = F.normalize(feats.float(), dim=1)
        return temperature * torch.einsum("bdhw,kd->bkhw", feats, self.embeddings)


def _is_vocabulary(names) -> bool:
    return isinstance(names, tuple) and all(isinstance(n, tuple) for n in names)


def split_towers(clip_model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Detach the image tower from an open_clip model: (visual, model-with-text-tower-only).

    Both parts share no parameters, so each is registered once in the segmenter.
    """
    visual = clip_model.visual
    clip_model.visual = nn.Identity()
    return visual, clip_model
