"""Segmentation on a CPU (issue #29): the residual blocks run by hand equal open_clip's own
forward in fp32, every stage runs in its intended dtype under CPU autocast without falling to a
slow path (no batched product over an expanded weight), and the bf16 path gives the fp32 path's
labels on the tests' images. No wall-clock figures here: ``tools/benchmark.py cpu`` measures."""

from __future__ import annotations

import copy
import importlib.util
import os

import numpy as np
import open_clip
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clip_dinoiser.models import CLIPBackbone, build_model
from clip_dinoiser.models.backbone import plain_block, residual_block
from clip_dinoiser.models.maskclip import Features
from clip_dinoiser.models.text import encode_text_to_eot
from clip_dinoiser.ops import pad_to_multiple
from tests.conftest import random_image
from tests.test_models import reference_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


class by_hand:  # noqa: N801 (a context manager named as what it does)
    """Within: ``transformer``'s forward runs every block through ``residual_block``, so that
    open_clip's own ``encode_image`` / ``encode_text`` go through our blocks."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    def __enter__(self):
        t = self.transformer

        def forward(x, attn_mask=None):
            for block in t.resblocks:
                x = residual_block(block, x, attn_mask=attn_mask)
            return x

        t.forward = forward
        return self

    def __exit__(self, *exc):
        del self.transformer.forward


def check_towers_by_hand(model: torch.nn.Module, sizes, *, tol: float) -> None:
    """Each block by hand equals the block's own forward (image tower; text tower with its
    causal mask), and whole ``encode_image`` / ``encode_text`` through our blocks equal open_clip's."""
    torch.manual_seed(0)
    assert all(plain_block(b) for b in (*model.visual.transformer.resblocks, *model.transformer.resblocks))
    for length in (7, 50):
        x = torch.randn(2, length, model.visual.transformer.width)
        for block in model.visual.transformer.resblocks:
            torch.testing.assert_close(residual_block(block, x), block(x), rtol=tol, atol=tol)
        x = torch.randn(3, length, model.transformer.width)
        mask = model.attn_mask[:length, :length]
        for block in model.transformer.resblocks:
            torch.testing.assert_close(residual_block(block, x, attn_mask=mask), block(x, attn_mask=mask),
                                       rtol=tol, atol=tol)
    size = model.visual.image_size
    images = torch.randn(2, 3, *((size, size) if isinstance(size, int) else size))
    expected = model.encode_image(images)
    with by_hand(model.visual.transformer):
        torch.testing.assert_close(model.encode_image(images), expected, rtol=tol, atol=tol)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a cat.", "a sofa", "itap of a television monitor."])
    expected = model.encode_text(tokens)
    with by_hand(model.transformer):
        torch.testing.assert_close(model.encode_text(tokens), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(encode_text_to_eot(model, tokens), expected, rtol=tol, atol=tol)
    for size in sizes:  # the MaskCLIP backbone against the hooked open_clip forward (tests/test_models.py)
        images = torch.rand(2, 3, *size)
        out = CLIPBackbone.from_open_clip(copy.deepcopy(model), feats_idx=-3)(images, with_inter=True)
        dense, inter = reference_features(model, pad_to_multiple(images, (16, 16)))
        torch.testing.assert_close(out.dense, dense, rtol=tol, atol=tol)
        torch.testing.assert_close(out.inter, inter, rtol=tol, atol=tol)


def test_blocks_by_hand_equal_open_clips_forward(clip):
    """The fp32 numerical contract: our blocks (``residual_block``, the backbone, the text tower)
    equal open_clip's own forward to fp32 rounding."""
    check_towers_by_hand(clip, [(64, 64), (48, 80), (37, 70)], tol=1e-5)


@pytest.mark.slow
def test_vit_b16_blocks_by_hand_equal_open_clips_forward():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16").eval()
    check_towers_by_hand(model, [(224, 224), (448, 448), (320, 480)], tol=2e-5)


PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_attention_math", "_native_multi_head_attention")


class OpDtypes(TorchDispatchMode):
    """Records every aten op below autocast: (stage, op name, dtypes of its floating tensor inputs,
    whether an input is expanded: a zero stride over a dimension of size > 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage, self.ops = "", []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs or {}))
                   if isinstance(a, torch.Tensor) and a.is_floating_point()]
        expanded = any(s == 0 and n > 1 for t in tensors for s, n in zip(t.stride(), t.shape))
        name = func.overloadpacket.__name__
        self.ops.append((self.stage, name, tuple(str(t.dtype)[6:] for t in tensors), expanded))
        return func(*args, **(kwargs or {}))

    def of(self, stage: str, names=None) -> list[tuple]:
        return [op for op in self.ops if op[0] == stage and (names is None or op[1] in names)]


def test_every_stage_runs_in_its_dtype_under_cpu_autocast(model_cfg):
    """Under CPU bf16 autocast the backbone's and the heads' products run in bf16 on plain
    matrices (no batched product over an expanded weight, the slow path of nn.MultiheadAttention
    under autocast), layer norms with fp32 statistics; the correlations, the pooling, the classifier and the
    refinements in fp32 (thresholds and a temperature of 100)."""
    model = build_model({**model_cfg, "maskclip": {**model_cfg["maskclip"], "ks_thresh": 0.5, "pd_thresh": 0.1}})
    model.set_vocabulary(["cat", "sofa", "background"])
    images = torch.rand(2, 3, 64, 80)
    record = OpDtypes()
    with record, torch.autocast("cpu", dtype=torch.bfloat16):
        record.stage = "backbone"
        out = model.backbone(images, with_inter=True, with_keys=True)
        record.stage = "heads"
        corrs, objectness = model.heads(out.inter)
        record.stage = "decode"
        probs = model.decode(Features(out.dense, out.keys, corrs, objectness))
    products = record.of("backbone", PRODUCTS)
    assert {op[1] for op in products} == {"mm", "addmm", "_scaled_dot_product_flash_attention_for_cpu"}
    assert all(set(op[2]) == {"bfloat16"} and not op[3] for op in products), products
    assert len(record.of("backbone", ["_scaled_dot_product_flash_attention_for_cpu"])) == 3  # blocks 0-2 of 4
    norms = record.of("backbone", ["native_layer_norm"])
    # bf16 tokens, fp32 weight and bias: PyTorch's CPU kernel for that mix keeps its statistics in fp32
    assert norms and all(op[2] == ("bfloat16", "float32", "float32") for op in norms), norms
    assert out.dense.dtype == out.inter.dtype == torch.bfloat16
    heads = record.of("heads", PRODUCTS)
    assert [(op[1], set(op[2])) for op in heads] == [("convolution", {"bfloat16"}), ("bmm", {"float32"}),
                                                    ("convolution", {"bfloat16"})]
    assert corrs.dtype == torch.float32
    decode = [op for op in record.of("decode") if op[1] != "_to_copy"]  # after the casts of its bf16 inputs
    assert decode and all(set(op[2]) <= {"float32"} for op in decode), [op for op in decode if "bfloat16" in op[2]]
    assert {"bmm", "_softmax"} <= {op[1] for op in decode}
    assert probs.dtype == torch.float32


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_labels_equal_fp32_labels_on_the_tests_images(model_cfg, seed):
    """The fast path (bf16 autocast) gives the plain path's labels wherever the plain path has no
    near-tie (top-two probability margin above 1e-2); the window sums are fp32."""
    from clip_dinoiser.engine.evaluation.inference import segment

    model = build_model(model_cfg)
    image = random_image(75, 100, seed=seed)
    labels, probs = segment(model, image, ["cat", "sofa", "tree", "background"], precision="fp32")
    fast, fast_probs = segment(model, image, precision="bf16")
    assert fast_probs.dtype == torch.float32
    top2 = probs.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-2).numpy()
    assert clear.mean() > 0.5 and np.array_equal(fast[clear], labels[clear])
    assert (fast_probs - probs).abs().max() < 0.05


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    import clip_dinoiser.precision as precision
    from clip_dinoiser.engine.evaluation.inference import autocast

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert precision.resolve_precision("auto", torch.device("cuda")) == "fp32"  # the paper's, on a GPU
    for forced in ("fp32", "bf16", "fp16"):
        assert precision.resolve_precision(forced, "cpu") == forced
    with autocast("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") is native
        if native:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_this_cpus_bf16_units_are_read_from_torch():
    """AMX tiles or AVX512-BF16, as PyTorch's CPU checks report them."""
    from clip_dinoiser.precision import cpu_has_native_bf16

    assert cpu_has_native_bf16() == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


@pytest.mark.slow
def test_exported_segmenter_gives_pytorchs_labels(tmp_path, tiny_clip_file, monkeypatch):
    """tools/export.py writes one ONNX file; ONNX Runtime gives the PyTorch model's probabilities on
    the tests' windows, and the README's lines give the PyTorch pipeline's labels on a photo."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import json
    import re

    from PIL import Image

    from clip_dinoiser import load
    from clip_dinoiser.engine.evaluation.export import WindowSegmenter
    from clip_dinoiser.engine.evaluation.inference import resize_keep_ratio, segment, to_tensor
    from tests.conftest import write_heads

    spec = importlib.util.spec_from_file_location("tool_export", os.path.join(ROOT, "tools", "export.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    name, path = tiny_clip_file
    heads = write_heads(tmp_path, proj_dim=256, seed=3)  # the default model.proj_dim
    classes = ["cat", "sofa,couch", "tree", "background"]
    out = str(tmp_path / "segmenter.onnx")
    assert tool.main(["--prompts", *classes, "--weights", heads, "--clip-name", name, "--clip-pretrained", path,
                 "--output", out]) == 0
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["classes"]) == ["cat", "sofa", "tree", "background"]
    model = load("clip_dinoiser", heads, "cpu", precision="fp32", clip={"name": name, "pretrained": path}).model
    model.set_vocabulary(classes)
    image = random_image(375, 500, seed=4)
    resized = to_tensor(resize_keep_ratio(image))
    windows = torch.stack([resized[:, :, :448], resized[:, :, -448:], resized[:, :, 100:548]])
    expected = WindowSegmenter(model)(windows)
    got = torch.from_numpy(session.run(None, {"windows": windows.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    top2 = expected.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-2
    assert clear.float().mean() > 0.5 and torch.equal(got.argmax(1)[clear], expected.argmax(1)[clear])
    # The README's lines, as written, on a photo: PyTorch's labels up to the resize kernels.
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "onnxruntime" in b]
    Image.fromarray(image).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    labels, _ = segment(model, np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB")))
    assert namespace["labels"].shape == labels.shape and (namespace["labels"] == labels).mean() > 0.9
