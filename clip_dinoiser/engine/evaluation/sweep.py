"""Inference sweeps: several inference-time settings scored from one network pass per window.

``sweep={model.gamma:[0.1,0.2,0.3],model.bg_refine:[true,false]}`` gives the grid of every
combination (``points``); each point becomes a ``Setting`` of the evaluator. Only settings that
act after the network passes can be swept this way (``SWEEPABLE``); anything that needs other
heads or another backbone pass (``model.feats_idx``, ...) is a training sweep (``tools/train.py -m``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ...config import ModelConfig, field_kind
from ...errors import ConfigError

# sweep key -> the Decoding field it sets (None: not a Decoding field)
SWEEPABLE = MappingProxyType({
    "model.gamma": "gamma", "model.delta": "delta", "model.bg_refine": "bg_refine",
    "model.maskclip.ks_thresh": "ks_thresh", "model.maskclip.pd_thresh": "pd_thresh",
    "model.maskclip.temperature": "temperature", "model.post.prob_thd": "prob_thd",
    "model.post.area_thd": "area_thd", "model.post.pamr_steps": "pamr_steps", "data.vocabulary": None,
})


def _check(key: str, value: Any) -> Any:
    """A swept value, checked as the config field it sets (its kind of number)."""
    if key == "model.bg_refine":
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"sweep {key}: {value!r} is not true, false or null")
        return value
    if key == "data.vocabulary":
        return None if value is None else str(value)
    kind = field_kind(ModelConfig, key.removeprefix("model."))
    checked = kind.check(value, f"sweep {key}")
    return int(checked) if kind.integer else float(checked)


def sweep_points(sweep: Mapping[str, Sequence[Any]] | None) -> list[dict[str, Any]]:
    """Every combination of the swept values, in the order given (the last key varies fastest).
    An unknown key or a bad value is a ``ConfigError``; no sweep gives one empty point."""
    if not sweep:
        return [{}]
    for key, values in sweep.items():
        if key not in SWEEPABLE:
            raise ConfigError(f"sweep: {key} cannot be swept in one pass (choose from {', '.join(SWEEPABLE)}; "
                              "settings that need other heads are a training sweep: tools/train.py -m)")
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"sweep {key}: give a list of values, e.g. {key}:[0.1,0.2]")
    keys = list(sweep)
    checked = {k: [_check(k, v) for v in sweep[k]] for k in keys}
    for key, values in checked.items():
        names = [point_name({key: v}) for v in values]
        twice = sorted({n.split("=", 1)[1] for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"sweep {key}: the value {', '.join(twice)} is given twice (each setting is scored "
                              "once, in a folder of its own): remove the repeated value")
    return [dict(zip(keys, values)) for values in itertools.product(*checked.values())]


def point_name(point: Mapping[str, Any]) -> str:
    """A folder name for a point: ``gamma=0.1,bg_refine=true`` (the last part of each key)."""
    def text(v: Any) -> str:
        return {True: "true", False: "false", None: "null"}.get(v, str(v)) if not isinstance(v, float) else f"{v:g}"

    parts = [f"{k.rsplit('.', 1)[-1]}={text(v).replace('/', '_')}" for k, v in point.items()]
    return ",".join(parts) or "default"


def decoding_fields(point: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Decoding`` fields a point sets (bg_refine and the vocabulary are handled apart)."""
    return {SWEEPABLE[k]: v for k, v in point.items() if SWEEPABLE[k] not in (None, "bg_refine")}
