"""Text side: vocabularies, prompt-template ensembles and the cached zero-shot classifier."""

from __future__ import annotations

import copy
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MaskCLIPConfig
from ..errors import UserError
from ..ops import full_precision
from ..vocabulary import Vocabulary, parse_vocabulary, read_vocabulary_file
from .backbone import residual_block, sequence_first
from .text_cache import TextEmbeddingCache

__all__ = ["Classes", "TextClassifier", "Vocabulary", "max_over_synonyms", "name_queries", "parse_vocabulary",
           "read_vocabulary_file", "text_tower"]

log = logging.getLogger(__name__)

def imagenet_templates() -> list[str]:
    """The 80 CLIP ImageNet prompt templates (Radford et al., 2021), as format strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


# MaskCLIP's five scene templates, appended to the 80 in its prompt engineering
# (tools/maskclip_utils/prompt_engineering.py, prompt_templates)
SCENE_TEMPLATES = ("there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
                   "this is the {} in the scene.", "this is one {} in the scene.")


def maskclip_templates() -> list[str]:
    """MaskCLIP's 85 templates: the 80 CLIP ImageNet templates, then its five scene templates."""
    return imagenet_templates() + list(SCENE_TEMPLATES)


TEMPLATE_SETS: Mapping[str, Callable[[], list[str]]] = MappingProxyType({
    "imagenet80": imagenet_templates,
    "maskclip85": maskclip_templates,
    "none": lambda: ["{}"],
})


def causal_text_tower(clip_model: nn.Module) -> bool:
    """True for an open_clip ``CLIP`` text tower under a causal mask that pools at the
    end-of-text token: only then are the tokens after it unable to change the result."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    pool = getattr(clip_model, "text_pool_type", "argmax")
    return (all(getattr(clip_model, n, None) is not None for n in needed)
            and (pool == "argmax" or (pool == "eos" and getattr(clip_model, "text_eos_id", None) is not None)))


def encode_text_to_eot(clip_model: nn.Module, tokens: Tensor) -> Tensor:
    """open_clip's ``encode_text``, run only up to the batch's last end-of-text position.

    Under CLIP's causal mask a token never attends to later ones, so the end-of-text feature
    (the pooled output) does not depend on the padding after it: cutting the sequence, the
    positional embedding and the mask there gives the same embeddings to float rounding, for
    ~1/6 of the work with the 80 templates (<= 12 of 77 tokens). B x L tokens -> B x D.
    """
    m = clip_model
    pool = getattr(m, "text_pool_type", "argmax")
    ends = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == m.text_eos_id).int().argmax(dim=-1)
    n = int(ends.max()) + 1
    cast = m.transformer.get_cast_dtype()
    x = m.token_embedding(tokens[:, :n]).to(cast) + m.positional_embedding[:n].to(cast)
    mask = m.attn_mask[:n, :n]
    seq_first = sequence_first(m.transformer)  # open_clip < 2.26: blocks take L x B x C
    for block in m.transformer.resblocks:  # batch-first, by hand where it can (``residual_block``)
        x = residual_block(block, x, seq_first=seq_first, attn_mask=mask)
    x = m.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), ends]
    proj = m.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


@torch.no_grad()
def encode_names(
    encode_text: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    names: Sequence[str],
    templates: Sequence[str],
    *,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Per name, the mean over ``templates`` of the L2-normalised text features: N x D (fp32).

    One model call per name (all its templates), so a name's embedding does not depend on
    which other names are encoded with it (or were found in the cache).
    """
    out = []
    for name in names:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        out.append(F.normalize(encode_text(tokens).float(), dim=-1).mean(dim=0))
    return torch.stack(out)


def combine_synonyms(vocabulary: Vocabulary, name_embeddings: dict[str, Tensor]) -> Tensor:
    """Class embedding = normalise(mean over its synonyms' template means): K x D."""
    per_class = [torch.stack([name_embeddings[s] for s in synonyms]).mean(dim=0) for synonyms in vocabulary]
    return F.normalize(torch.stack(per_class), dim=-1)


def name_queries(vocabulary: Vocabulary, name_embeddings: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Every name of every class as a query of its own (``model.maskclip.synonyms=max``): (Q x D
    normalised template means, in the vocabulary's order, a name listed in two classes twice;
    Q class indices). SCLIP / NACLIP / ClearCLIP's ``get_cls_idx`` and query features."""
    names = [s for synonyms in vocabulary for s in synonyms]
    index = [i for i, synonyms in enumerate(vocabulary) for _ in synonyms]
    queries = F.normalize(torch.stack([name_embeddings[n] for n in names]), dim=-1)
    return queries, torch.tensor(index, dtype=torch.long)


def max_over_synonyms(probs: Tensor, query_class: Tensor, num_classes: int) -> Tensor:
    """A class's probability is the largest of its names' (SCLIP's ``postprocess_result``, the
    names' softmax taken over all names): B x Q x ... -> B x K x ... ."""
    index = query_class.to(probs.device).view(1, -1, *([1] * (probs.dim() - 2))).expand_as(probs)
    out = probs.new_zeros(probs.shape[0], num_classes, *probs.shape[2:])
    return out.scatter_reduce(1, index, probs, reduce="amax", include_self=True)


def build_text_classifier(
    encode_text: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    vocabulary: Vocabulary,
    templates: Sequence[str],
    *,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Template-averaged class embeddings, K x D, L2-normalised.

    Class embedding = normalise(mean over synonyms of mean over templates of
    normalise(encode_text(template.format(synonym)))); for one synonym this is the
    MaskCLIP / CLIP-DINOiser recipe.
    """
    names = list(dict.fromkeys(s for synonyms in vocabulary for s in synonyms))
    feats = encode_names(encode_text, tokenizer, names, templates, device=device)
    return combine_synonyms(vocabulary, dict(zip(names, feats)))


class TextClassifier(nn.Module):
    """Holds CLIP's text tower once and the class embeddings of the current vocabulary.

    Changing the vocabulary re-encodes only the prompts (results are kept per vocabulary in
    memory, and per class name on disk with ``disk_cache``); the CLIP model is never rebuilt.
    A causal CLIP text tower runs only up to the last end-of-text token (``encode_text_to_eot``).

    Args:
        clip_model: open_clip model whose text tower is used (its image tower may be
            detached, see :func:`split_towers`).
        tokenizer: open_clip tokenizer of that model.
        templates: template-set name (``imagenet80``, ``none``) or a list of format strings.
        cache_size: how many vocabularies to keep encoded in memory.
        disk_cache: embeddings of class names on disk, shared by runs with the same weights.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        *,
        templates: str | Sequence[str] = MaskCLIPConfig.templates,
        cache_size: int = 16,
        disk_cache: TextEmbeddingCache | None = None,
    ) -> None:
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        if causal_text_tower(self.clip):
            self._encode_text = functools.partial(encode_text_to_eot, self.clip)
        else:
            log.info("%s: text tower is not a causal CLIP tower; prompts are encoded at full context length",
                     type(self.clip).__name__)
            self._encode_text = self.clip.encode_text
        if isinstance(templates, str):
            if templates not in TEMPLATE_SETS:
                raise UserError(f"unknown template set '{templates}' (choose from {sorted(TEMPLATE_SETS)})")
            templates = TEMPLATE_SETS[templates]()
        self.templates = list(templates)
        self.cache_size = cache_size
        self.disk_cache = disk_cache
        self._cache: OrderedDict[Vocabulary, tuple[Tensor, Tensor, Tensor]] = OrderedDict()
        self.vocabulary: Vocabulary = ()
        self.register_buffer("embeddings", torch.empty(0), persistent=False)
        self.register_buffer("queries", torch.empty(0), persistent=False)
        self.register_buffer("query_class", torch.empty(0, dtype=torch.long), persistent=False)

    def train(self, mode: bool = True) -> TextClassifier:
        return super().train(False)

    @property
    def class_names(self) -> list[str]:
        return [synonyms[0] for synonyms in self.vocabulary]

    @property
    def dim(self) -> int | None:
        """Width of the text embeddings (None where the tower does not say)."""
        proj = getattr(self.clip, "text_projection", None)
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if isinstance(proj, Tensor):
            return int(proj.shape[-1])
        return None

    def classes(self, names: Sequence[str] | Vocabulary) -> Classes:
        """The class embeddings of ``names`` (encoded once per vocabulary, then from the cache),
        without changing the current vocabulary."""
        vocab = names if _is_vocabulary(names) else parse_vocabulary(names)
        if vocab not in self._cache:
            found = self._name_embeddings(vocab)
            self._cache[vocab] = (combine_synonyms(vocab, found), *name_queries(vocab, found))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(vocab)
        device = self.embeddings.device
        embeddings, queries, query_class = self._cache[vocab]
        return Classes(vocab, embeddings.to(device), queries.to(device), query_class.to(device))

    def set_vocabulary(self, names: Sequence[str] | Vocabulary) -> None:
        """Make ``names`` the current vocabulary (see ``classes``)."""
        classes = self.classes(names)
        self.vocabulary = classes.vocabulary
        self.embeddings, self.queries, self.query_class = classes.embeddings, classes.queries, classes.query_class

    @property
    def current(self) -> Classes:
        if not self.vocabulary:
            raise RuntimeError("no vocabulary set: call set_vocabulary(class_names) first")
        return Classes(self.vocabulary, self.embeddings, self.queries, self.query_class)

    def _name_embeddings(self, vocab: Vocabulary) -> dict[str, Tensor]:
        """Template means of every synonym in ``vocab`` (CPU), from the disk cache where present."""
        names = list(dict.fromkeys(s for synonyms in vocab for s in synonyms))
        cache = self.disk_cache
        found = {n: e for n in names
                 if cache is not None and (e := cache.get(self.templates, n, self.dim)) is not None}
        missing = [n for n in names if n not in found]
        if missing:
            device = next(self.clip.parameters()).device
            log.info("encoding %d class name%s with CLIP's text tower (%d prompt templates each)", len(missing),
                     "s" if len(missing) > 1 else "", max(1, len(self.templates)))
            feats = encode_names(self._encode_text, self.tokenizer, missing, self.templates, device=device).cpu()
            for name, emb in zip(missing, feats):
                found[name] = emb
                if cache is not None:
                    cache.put(self.templates, name, emb)
        log.debug("text embeddings: %d from the disk cache, %d encoded", len(names) - len(missing), len(missing))
        return found

    def forward(self, feats: Tensor, temperature: float, classes: Classes | None = None,
                synonyms: str = "mean") -> Tensor:
        """Cosine logits times ``temperature``: B x D x h x w -> B x K x h x w (fp32), against
        ``classes`` (default: the current vocabulary); with ``synonyms="max"`` against every name,
        B x Q x h x w (``Classes.name_queries``)."""
        classes = classes or self.current
        embeddings = classes.name_queries()[0] if synonyms == "max" else classes.embeddings
        with full_precision(feats):  # cosines times a temperature of 100: fp32 under autocast too
            feats = F.normalize(feats.float(), dim=1)
            return temperature * torch.einsum("bdhw,kd->bkhw", feats, embeddings.to(feats.device).float())


@dataclass(frozen=True, eq=False)
class Classes:
    """A vocabulary and its K x D class embeddings (L2-normalised); for the max rule over
    synonyms, the Q x D embeddings of every name and the class of each (``name_queries``)."""

    vocabulary: Vocabulary
    embeddings: Tensor
    queries: Tensor | None = None
    query_class: Tensor | None = None
    background: int | None = None  # the background class's index where no name says 'background' (a benchmark's 0)

    def name_queries(self) -> tuple[Tensor, Tensor]:
        """(Q x D name embeddings, Q class indices); one per class where none were encoded."""
        if self.queries is None or self.query_class is None or not len(self.queries):
            return self.embeddings, torch.arange(len(self.vocabulary), device=self.embeddings.device)
        return self.queries, self.query_class

    @property
    def names(self) -> list[str]:
        return [synonyms[0] for synonyms in self.vocabulary]

    @property
    def bg_index(self) -> int | None:
        """Index of the class named ``background`` (any synonym), else ``background``, else None."""
        for i, synonyms in enumerate(self.vocabulary):
            if any(s.lower() == "background" for s in synonyms):
                return i
        return self.background


def _is_vocabulary(names) -> bool:
    return isinstance(names, tuple) and all(isinstance(n, tuple) for n in names)


def text_tower(clip_model: nn.Module) -> nn.Module:
    """The open_clip model without its image tower (a shallow copy; ``clip_model`` is unchanged).

    The segmenter registers the image tower (in its backbone) and this text model apart, so
    they share no parameters and each is held once."""
    text = copy.copy(clip_model)
    text._modules = {**clip_model._modules, "visual": nn.Identity()}
    return text
