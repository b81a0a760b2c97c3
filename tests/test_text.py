"""Text side: the short (end-of-text) encoding against open_clip's own encode_text, the disk cache."""

from __future__ import annotations

import logging
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clip_dinoiser.models import build_model
from clip_dinoiser.models.text import (
    TextClassifier,
    causal_text_tower,
    encode_text_to_eot,
    imagenet_templates,
    text_tower,
)

NAMES = ["cat", "television monitor", "a very long class name with many words in it", "猫", "sky"]


def _prompts() -> list[str]:
    return [t.format(n) for n in NAMES for t in imagenet_templates()]


@torch.no_grad()
@pytest.mark.parametrize("arch", ["tiny", pytest.param("ViT-B-16", marks=pytest.mark.slow)])
def test_short_encoding_equals_open_clip_encode_text(tiny_clip_file, arch):
    """Cut at the batch's last end-of-text token: open_clip's full-length encode_text to 1e-6."""
    name, path = tiny_clip_file
    if arch == "tiny":
        model = open_clip.create_model(name, pretrained=path).eval()
    else:
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16").eval()  # ViT-B/16 sized, random weights
        name = "ViT-B-16"
    tokens = open_clip.get_tokenizer(name)(_prompts())
    ends = tokens.argmax(-1)
    assert ends.max() < 30 and ends.min() < ends.max()  # really cut, and mixed lengths in one batch
    assert causal_text_tower(model)
    ours = F.normalize(encode_text_to_eot(model, tokens), dim=-1)
    theirs = F.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    single = F.normalize(encode_text_to_eot(model, tokens[:1]), dim=-1)  # cut at its own length
    torch.testing.assert_close(single, theirs[:1], rtol=0, atol=1e-6)


@torch.no_grad()
def test_non_causal_text_tower_falls_back_to_full_length_with_a_log_line(tiny_clip_file, caplog):
    name, path = tiny_clip_file
    model = open_clip.create_model(name, force_custom_text=True).eval()  # open_clip's CustomTextCLIP
    text_model = text_tower(model)
    assert not causal_text_tower(text_model)
    with caplog.at_level(logging.INFO, logger="clip_dinoiser"):
        classifier = TextClassifier(text_model, open_clip.get_tokenizer(name), templates="none")
    assert "encoded at full context length" in caplog.text
    classifier.set_vocabulary(["cat", "dog"])
    tokens = open_clip.get_tokenizer(name)(["cat", "dog"])
    torch.testing.assert_close(classifier.embeddings, F.normalize(text_model.encode_text(tokens), dim=-1))


def _count_text_calls(model) -> list[int]:
    calls: list[int] = []
    encode = model.text._encode_text
    model.text._encode_text = lambda t: calls.append(len(t)) or encode(t)
    return calls


def test_disk_cache_hit_miss_and_invalidation(model_cfg, tmp_path):
    cache = tmp_path / "cache"
    weights = tmp_path / "clip.pt"
    weights.write_bytes(open(model_cfg["clip"]["pretrained"], "rb").read())
    cfg = {**model_cfg, "clip": {**model_cfg["clip"], "pretrained": str(weights)}, "text_cache": str(cache)}
    cold = build_model(cfg)
    cold_calls = _count_text_calls(cold)
    cold.set_vocabulary(["cat", "tv, television", "background"])
    assert cold_calls == [80] * 4  # one call per distinct name
    entries = sorted(os.listdir(cache / "text"))
    assert len(entries) == 4 and all(e.endswith(".pt") for e in entries)  # no temporary file left

    warm = build_model(cfg)  # a new run: the same prompts skip the text tower
    warm_calls = _count_text_calls(warm)
    warm.set_vocabulary(["cat", "tv, television", "background"])
    assert warm_calls == [] and torch.equal(warm.text.embeddings, cold.text.embeddings)
    warm.set_vocabulary(["sky", "cat"])  # only the new name is encoded
    assert warm_calls == [80]

    before = set(os.listdir(cache / "text"))
    os.utime(weights, ns=(1, 1))  # a changed weights file invalidates its entries
    changed = build_model(cfg)
    changed_calls = _count_text_calls(changed)
    changed.set_vocabulary(["cat"])
    assert changed_calls == [80]

    (new_entry,) = set(os.listdir(cache / "text")) - before
    (cache / "text" / new_entry).write_bytes(b"truncated")  # an unreadable entry is recomputed
    again = build_model(cfg)
    again_calls = _count_text_calls(again)
    again.set_vocabulary(["cat"])
    assert again_calls == [80] and torch.equal(again.text.embeddings, changed.text.embeddings)


def test_no_disk_cache_for_random_weights_or_when_off(model_cfg, tmp_path):
    off = build_model({**model_cfg, "text_cache": None})
    assert off.text.disk_cache is None
    random_clip = build_model({**model_cfg, "clip": {**model_cfg["clip"], "pretrained": None},
                               "text_cache": str(tmp_path)})
    assert random_clip.text.disk_cache is None


def test_default_cache_folder_follows_xdg_cache_home(model_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = build_model(model_cfg)  # text_cache defaults to auto
    model.set_vocabulary(["cat"])
    assert len(os.listdir(tmp_path / "xdg" / "clip_dinoiser" / "text")) == 1


def test_benchmark_tool_startup_smoke(tmp_path):
    """tools/benchmark.py startup runs end to end (tiny CLIP) and reports the cold / warm / baseline times."""
    import json
    import subprocess
    import sys

    from .conftest import TINY_CLIP_CFG

    cfg = tmp_path / "tiny-ViT-startup.json"
    cfg.write_text(json.dumps(TINY_CLIP_CFG))
    out = tmp_path / "startup.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "tools/benchmark.py"), "startup", "--clip", str(cfg),
                        "--repeat", "1", "--json", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(out.read_text())["startup"]
    assert figures["prompts"] == 5 and min(figures["baseline_s"], figures["cold_s"], figures["warm_s"]) > 0
    assert figures["warm_vs_baseline"] == pytest.approx(figures["warm_s"] / figures["baseline_s"])
