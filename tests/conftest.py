"""Shared fixtures: tiny open_clip / timm models built through the real code paths, on disk."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Caches (text embeddings, downloads) go to a fresh folder, also for the tools run in subprocesses."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = previous


TINY_CLIP = "tiny-ViT-test"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip(directory: str) -> str:
    """Write the tiny config as an open_clip model-config JSON and register it."""
    import open_clip

    path = os.path.join(directory, f"{TINY_CLIP}.json")
    with open(path, "w") as f:
        json.dump(TINY_CLIP_CFG, f)
    open_clip.add_model_config(path)
    return TINY_CLIP


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory) -> tuple[str, str]:
    """(model name, checkpoint path): a random tiny CLIP saved as an open_clip state dict."""
    import open_clip

    d = tmp_path_factory.mktemp("clip")
    name = register_tiny_clip(str(d))
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    # Random init leaves some tensors at exact constants; perturb them so tests are not degenerate.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = str(d / "tiny_clip.pt")
    torch.save(model.state_dict(), path)
    return name, path



@pytest.fixture()
def clip(tiny_clip_file):
    """The tiny CLIP of ``tiny_clip_file`` as open_clip loads it (``create_model(name, pretrained=path)``)."""
    import open_clip

    name, path = tiny_clip_file
    return open_clip.create_model(name, pretrained=path).eval()

TINY_RN = "tiny-RN-test"
TINY_RN_CFG = {  # open_clip's ModifiedResNet: layers per stage as a list; width 8 -> 256 channels, 4 heads
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_rn_file(tmp_path_factory) -> tuple[str, str]:
    """(model-config JSON path, checkpoint path): a random tiny CLIP ResNet (open_clip's
    ModifiedResNet) with non-trivial BatchNorm statistics, saved as an open_clip state dict."""
    import open_clip

    d = tmp_path_factory.mktemp("clip_rn")
    config = str(d / f"{TINY_RN}.json")
    with open(config, "w") as f:
        json.dump(TINY_RN_CFG, f)
    open_clip.add_model_config(config)
    torch.manual_seed(3)
    model = open_clip.create_model(TINY_RN)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = str(d / "tiny_rn.pt")
    torch.save(model.state_dict(), path)
    return config, path


def write_heads(folder, *, proj_dim: int, seed: int, in_dim: int = 64, adjust=None) -> str:
    """Random heads (seeded) for a CLIP of width ``in_dim`` (the tiny CLIP's: 64), changed by
    ``adjust(heads)`` if given, saved as ``folder/last.pt`` in the released format."""
    from clip_dinoiser.models import DINOiserHeads, save_heads

    torch.manual_seed(seed)
    heads = DINOiserHeads(in_dim=in_dim, proj_dim=proj_dim, kernel_size=3)
    if adjust is not None:
        with torch.no_grad():
            adjust(heads)
    path = str(folder / "last.pt")
    save_heads(heads, path)
    return path


@pytest.fixture(scope="session")
def tiny_heads_file(tmp_path_factory) -> str:
    """Random heads for the tiny CLIP (width 64), in the released ``last.pt`` format."""
    return write_heads(tmp_path_factory.mktemp("heads"), proj_dim=16, seed=1)


@pytest.fixture()
def model_cfg(tiny_clip_file, tiny_heads_file) -> dict:
    name, path = tiny_clip_file
    return {
        "name": "clip_dinoiser",
        "clip": {"name": name, "pretrained": path},
        "checkpoint": tiny_heads_file,
        "feats_idx": -3,
        "gamma": 0.2,
        "delta": 0.99,
        "proj_dim": 16,
        "maskclip": {"ks_thresh": 0.0, "pd_thresh": 0.0, "templates": "imagenet80"},
    }


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured RGB uint8 image (blocks of colour plus noise) so models see content."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, h), rng.integers(0, w)
        img[y : y + h // 3, x : x + w // 3] = rng.integers(0, 255, 3)
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


TINY_DINO = {"arch": "vit_base_patch16_224", "kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64}}
TINY_FOUND = {"arch": "vit_small_patch8_224", "kwargs": {"depth": 2, "embed_dim": 24, "num_heads": 2, "img_size": 64}}


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory) -> dict:
    """``teachers`` config with tiny random timm ViTs and a FOUND decoder written to disk."""
    import timm

    d = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(2)
    cfg = {}
    for key, spec in (("dino", TINY_DINO), ("found", TINY_FOUND)):
        vit = timm.create_model(spec["arch"], pretrained=False, num_classes=0, **spec["kwargs"])
        with torch.no_grad():
            for p in vit.parameters():
                p.add_(0.05 * torch.randn_like(p))
        path = str(d / f"{key}.pth")
        torch.save(vit.state_dict(), path)
        cfg[key] = {"arch": spec["arch"], "pretrained": path, "kwargs": dict(spec["kwargs"])}
    decoder = str(d / "decoder_weights.pt")
    torch.save({"decoder": {"weight": torch.randn(1, 24, 1, 1) * 0.3, "bias": torch.zeros(1)}}, decoder)
    cfg["found"]["decoder"] = decoder
    return cfg


TINY_PROXY = {"arch": "vit_base_patch8_224", "kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64}}


@pytest.fixture(scope="session")
def tiny_proxy(tmp_path_factory) -> dict:
    """``model.proxy`` keys of a tiny random DINO-like ViT with patch 8 (ProxyCLIP's proxy), written to disk."""
    import timm

    torch.manual_seed(4)
    vit = timm.create_model(TINY_PROXY["arch"], pretrained=False, num_classes=0, **TINY_PROXY["kwargs"])
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp("proxy") / "proxy.pth")
    torch.save(vit.state_dict(), path)
    return {"arch": TINY_PROXY["arch"], "pretrained": path, "kwargs": dict(TINY_PROXY["kwargs"])}


def write_images(folder: str, n: int, size=(80, 100), nested: bool = True) -> str:
    from PIL import Image

    for i in range(n):
        sub = os.path.join(folder, f"n{i % 2:08d}") if nested else folder
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(random_image(*size, seed=100 + i)).save(os.path.join(sub, f"img_{i}.JPEG"))
    return folder
