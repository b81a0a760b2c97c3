"""Frozen teachers for distillation (DINO correlations, FOUND objectness, or your own), built
from the ``teachers`` config node: name -> ``TeacherConfig``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ..config import HEADS, TeacherConfig, parse
from ..download import resolve_released
from ..errors import ConfigError
from ..plugins import locate
from ..weights import FILE, Weight, check_weights, released_weight, timm_weight
from .base import Teacher
from .dino import DINOTeacher
from .found import FOUNDTeacher, load_found_decoder
from .vit import FrozenViT, dino_pos_embed, load_timm_vit

log = logging.getLogger(__name__)

__all__ = ["HEADS", "DINOTeacher", "FOUNDTeacher", "FrozenViT", "TEACHER_TYPES", "Teacher", "build_teachers",
           "by_head", "check_teacher_files", "dino_pos_embed", "frozen_vit", "load_found_decoder", "load_timm_vit",
           "teacher_weights"]


def frozen_vit(cfg: TeacherConfig, key: str) -> FrozenViT:
    """The teacher's frozen timm ViT (``arch``, ``pretrained``, ``kwargs``)."""
    log.info("loading the teacher %s (%s, %s)", key, cfg.arch, cfg.pretrained or "random weights")
    return FrozenViT(load_timm_vit(cfg.arch, cfg.pretrained, f"{key}.pretrained", **dict(cfg.kwargs)))


def build_dino_teacher(cfg: TeacherConfig, key: str = "teachers.dino") -> DINOTeacher:
    return DINOTeacher(frozen_vit(cfg, key))


def build_found_teacher(cfg: TeacherConfig, key: str = "teachers.found") -> FOUNDTeacher:
    check_found_files(cfg, key)
    # "released": FOUND's decoder_weights.pt, downloaded once into the cache
    decoder = resolve_released(cfg.decoder, "found_decoder", cfg.decoder_url, key=f"{key}.decoder")
    vit = frozen_vit(cfg, key)
    return FOUNDTeacher(vit, load_found_decoder(decoder, vit.dim), antialias=cfg.antialias)


# teachers.<name>.type: factory(TeacherConfig, key) -> Teacher
TEACHER_TYPES: Mapping[str, Callable[..., Teacher]] = MappingProxyType(
    {"dino": build_dino_teacher, "found": build_found_teacher})


def check_found_files(cfg: TeacherConfig, key: str) -> None:
    """FOUND's decoder is set (a file, or ``released``)."""
    if not cfg.decoder:
        raise ConfigError(f"{key}.decoder is not set: give FOUND's decoder_weights.pt or 'released'")


def teacher_configs(cfg: Mapping[str, Any], prefix: str = "teachers") -> dict[str, TeacherConfig]:
    """Each entry of the ``teachers`` node as a checked ``TeacherConfig`` (unknown keys, wrong
    types and unknown types fail naming the key)."""
    configs = {}
    for name, entry in (cfg or {}).items():
        if name in TEACHER_TYPES and isinstance(entry, Mapping) and "type" not in entry:
            entry = {**entry, "type": name}  # 'found: {...}' is a FOUND teacher
        configs[name] = parse(TeacherConfig, entry, f"{prefix}.{name}")
    for name, c in configs.items():
        locate(c.type, TEACHER_TYPES, f"{prefix}.{name}.type")
    return configs


def teacher_weights(cfg: Mapping[str, Any], prefix: str = "teachers") -> list[Weight]:
    """The weights files of the ``teachers`` node (``weights.Weight`` rows): each teacher's ViT,
    FOUND's decoder."""
    rows = []
    for name, c in teacher_configs(cfg, prefix).items():
        vit = timm_weight(c.pretrained, f"{prefix}.{name}.pretrained", "teacher weights")
        if vit is not None and (c.type in TEACHER_TYPES or vit.kind == FILE):  # your own type: the files it names
            rows.append(vit)
        if c.type == "found":
            check_found_files(c, f"{prefix}.{name}")
            rows.append(released_weight(c.decoder, "found_decoder", f"{prefix}.{name}.decoder",
                                        "FOUND decoder weights", c.decoder_url))
    return [w for w in rows if w is not None]


def check_teacher_files(cfg: Mapping[str, Any], prefix: str = "teachers") -> None:
    """Every teacher's weights file found before any model is loaded (``teacher_weights``; the
    missing ones listed together)."""
    check_weights(teacher_weights(cfg, prefix))


def build_teachers(cfg: Mapping[str, Any], prefix: str = "teachers") -> dict[str, Teacher]:
    """name -> frozen teacher, from the ``teachers`` node; each teacher's ``head`` is checked."""
    check_teacher_files(cfg, prefix)
    teachers = {}
    for name, c in teacher_configs(cfg, prefix).items():
        factory = locate(c.type, TEACHER_TYPES, f"{prefix}.{name}.type")
        teacher = factory(c, f"{prefix}.{name}") if c.type in TEACHER_TYPES else factory(c)
        if getattr(teacher, "head", None) not in HEADS:
            raise ConfigError(f"{prefix}.{name}: the teacher's head is {getattr(teacher, 'head', None)!r} "
                              f"(expected one of {', '.join(HEADS)})")
        teachers[name] = teacher
    return teachers


def by_head(teachers: Mapping[str, Teacher], head: str) -> Teacher | None:
    """The teacher of ``head`` (None if none); two teachers of one head are a ``ConfigError``."""
    found = [name for name, t in teachers.items() if t.head == head]
    if len(found) > 1:
        raise ConfigError(f"teachers {', '.join(found)} all train the {head} head: keep one")
    return teachers[found[0]] if found else None
