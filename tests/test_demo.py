"""The demo end to end through its command line, the segment() API and image reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clip_dinoiser.data.images import load_image
from clip_dinoiser.engine.evaluation.inference import SlideConfig, segment, slide_inference, window_boxes
from clip_dinoiser.models import build_model

from .conftest import TINY_CLIP, TINY_CLIP_CFG, random_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(tmp_path, *overrides):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), *overrides],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


@pytest.fixture()
def clip_json(tmp_path):
    path = tmp_path / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(TINY_CLIP_CFG))
    return str(path)


def test_demo_writes_overlay_and_label_map(tmp_path, clip_json, tiny_clip_file, tiny_heads_file):
    image = random_image(300, 500)
    Image.fromarray(image).save(tmp_path / "photo.jpg")
    r = run_demo(tmp_path, "image=photo.jpg", "prompts=[cat,sofa,background]", "output=out",
                 f"model.clip.name={clip_json}", f"model.clip.pretrained={tiny_clip_file[1]}",
                 f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16")
    assert r.returncode == 0, r.stderr
    labels = np.asarray(Image.open(tmp_path / "out" / "photo_labels.png"))
    assert labels.shape == (300, 500) and labels.max() <= 2
    mask = Image.open(tmp_path / "out" / "photo_mask.png")
    assert mask.height == 300 and mask.width > 500  # the legend is appended on the right
    assert np.asarray(mask)[:, :500].std() > 0
    figure = Image.open(tmp_path / "out" / "photo_figure.png")  # input | MaskCLIP | CLIP-DINOiser | objectness
    assert figure.width >= 4 * 500 and 300 < figure.height < 400


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["image=missing.jpg", "prompts=[cat]"], "image not found: missing.jpg"),
        (["image=bad.jpg", "prompts=[cat]"], "cannot read image bad.jpg"),
        (["image=ok.png", "prompts=[]"], "prompt list is empty"),
        (["image=ok.png", "prompts=[cat,dog,cat]"], "listed twice"),
        (["image=ok.png", "prompts=[cat]", "model.checkpoint=nothing.pt"], "heads checkpoint not found"),
        (["image=ok.png"], "no classes: give 'prompts=[cat,sofa]'"),
        (["image=ok.png", "prompts=[猫,chien]"], """quote each name, e.g. 'prompts=["猫","chien"]'"""),
        (["image=ok.png", "prompts=[cat]", "prompts_file=missing.txt"], "not both"),
        (["image=ok.png", "prompts_file=missing.txt"], "missing.txt"),
    ],
)
def test_demo_user_errors_are_one_line(tmp_path, clip_json, tiny_clip_file, overrides, message):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    Image.fromarray(random_image(32, 32)).save(tmp_path / "ok.png")
    r = run_demo(tmp_path, *overrides, f"model.clip.name={clip_json}", f"model.clip.pretrained={tiny_clip_file[1]}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr
    assert "Traceback" not in r.stderr


def test_demo_checks_its_output_folder_before_building_the_model(tmp_path, clip_json, tiny_clip_file):
    """An output path that is a file fails at once; the unreadable CLIP weights show that no model was built."""
    Image.fromarray(random_image(32, 32)).save(tmp_path / "ok.png")
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    r = run_demo(tmp_path, "image=ok.png", "prompts=[cat]", "output=taken/sub", f"model.clip.name={clip_json}",
                 "model.clip.pretrained=garbage.pt")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: output=taken/sub: {tmp_path / 'taken'} exists and is not a folder"


@pytest.mark.slow  # tool processes, ~15-25 s: the default run's budget (README: Test)
def test_demo_reads_non_latin_prompts_quoted_or_from_a_file(tmp_path, clip_json, tiny_clip_file, tiny_heads_file):
    Image.fromarray(random_image(48, 64)).save(tmp_path / "ok.png")
    (tmp_path / "classes.txt").write_text("猫\nchien, chiot\n# a comment\n\nвода\n", encoding="utf-8")
    model = [f"model.clip.name={clip_json}", f"model.clip.pretrained={tiny_clip_file[1]}",
             f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16"]
    quoted = run_demo(tmp_path, "image=ok.png", 'prompts=["猫",chien]', "output=q", *model)
    assert quoted.returncode == 0, quoted.stderr
    assert np.asarray(Image.open(tmp_path / "q" / "ok_labels.png")).max() <= 1  # two classes
    from_file = run_demo(tmp_path, "image=ok.png", "prompts_file=classes.txt", "output=f", *model)
    assert from_file.returncode == 0, from_file.stderr
    labels = np.asarray(Image.open(tmp_path / "f" / "ok_labels.png"))
    assert labels.shape == (48, 64) and labels.max() <= 2  # three classes from the file


def test_images_of_any_mode_become_rgb_uint8(tmp_path):
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = np.dstack([random_image(20, 30), np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    deep = (gray.astype(np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    g = load_image(str(tmp_path / "gray.png"))
    assert g.shape == (20, 30, 3) and g.dtype == np.uint8 and (g[..., 0] == gray).all() and (g[..., 2] == gray).all()
    a = load_image(str(tmp_path / "rgba.png"))
    assert a.shape == (20, 30, 3) and (a == rgba[..., :3]).all()
    d = load_image(str(tmp_path / "deep.png"))
    assert d.shape == (20, 30, 3) and (d[..., 1] == gray).all()


def test_batched_slide_inference_equals_one_window_at_a_time(model_cfg):
    model = build_model(model_cfg)
    model.set_vocabulary(["cat", "dog", "background"])
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 200), torch.rand(3, 64, 64), torch.rand(3, 130, 70)]
    cfg = SlideConfig(crop=(64, 64), stride=(32, 32), window_batch=5)
    out = slide_inference(model, images, cfg=cfg, out_sizes=[(50, 100), (64, 64), (131, 71)])
    for img, res, size in zip(images, out, [(50, 100), (64, 64), (131, 71)]):
        h, w = img.shape[-2:]
        canvas, count = torch.zeros(3, h, w), torch.zeros(h, w)
        for y1, y2, x1, x2 in window_boxes(h, w, (64, 64), (32, 32)):
            p = model(img[None, :, y1:y2, x1:x2])
            canvas[:, y1:y2, x1:x2] += torch.nn.functional.interpolate(p, (y2 - y1, x2 - x1), mode="bilinear")[0]
            count[y1:y2, x1:x2] += 1
        expected = torch.nn.functional.interpolate((canvas / count)[None], size, mode="bilinear")[0]
        torch.testing.assert_close(res, expected, rtol=1e-5, atol=1e-6)


def test_window_boxes_cover_the_image_like_mmseg():
    boxes = window_boxes(448, 597, (448, 448), (224, 224))
    assert boxes == [(0, 448, 0, 448), (0, 448, 149, 597)]
    assert window_boxes(300, 200, (448, 448), (224, 224)) == [(0, 300, 0, 200)]


def test_segment_api_returns_labels_and_probabilities(model_cfg):
    model = build_model(model_cfg)
    image = random_image(120, 90)
    cfg = SlideConfig(scale=(256, 64))
    labels, probs = segment(model, image, ["sky", "tree"], cfg=cfg)
    assert labels.shape == (120, 90) and probs.shape == (2, 120, 90)
    assert np.array_equal(labels, probs.argmax(0).numpy())
    torch.testing.assert_close(probs.sum(0), torch.ones(120, 90))
    # the test-time pipeline by hand: cv2 keep-ratio resize to (256, 64), sliding windows, back to 120 x 90
    import cv2

    from clip_dinoiser.engine.evaluation.inference import slide_inference, to_tensor

    s = min(256 / 120, 64 / 90)
    resized = cv2.resize(image, (int(90 * s + 0.5), int(120 * s + 0.5)), interpolation=cv2.INTER_LINEAR)
    (expected,) = slide_inference(model, [to_tensor(resized)], cfg=cfg, out_sizes=[(120, 90)])
    torch.testing.assert_close(probs, expected)


def test_figure_panels_come_from_one_backbone_pass_and_equal_each_model(model_cfg, tiny_clip_file):
    """CLIP-DINOiser's labels equal ``segment``'s; MaskCLIP's equal a MaskCLIP model's on the same weights."""
    from clip_dinoiser.engine.evaluation.inference import segment_panels

    image = random_image(150, 230, seed=4)
    cfg = SlideConfig(scale=(256, 96), crop=(64, 64), stride=(32, 32), window_batch=5)
    model = build_model(model_cfg)
    model.set_vocabulary(["cat", "dog", "background"])
    ours, maskclip_labels, objectness = segment_panels(model, image, cfg=cfg)
    assert np.array_equal(ours, segment(model, image, cfg=cfg)[0])
    maskclip = build_model({**model_cfg, "name": "maskclip"})
    assert np.array_equal(maskclip_labels, segment(maskclip, image, ["cat", "dog", "background"], cfg=cfg)[0])
    assert objectness.shape == (150, 230) and 0 <= objectness.min() and objectness.max() <= 1
    assert not np.array_equal(ours, maskclip_labels)  # the panels really differ


@pytest.mark.parametrize(("h", "w"), [(860, 2912), (240, 320)])
def test_figure_and_legend_text_scale_with_the_image(h, w):
    """The legend's text (its dark pixels' rows) is 3-8 % of the shown image height at any size."""
    from clip_dinoiser.visualize import add_legend, make_palette, side_by_side, text_px

    image = np.full((h, w, 3), 255, np.uint8)
    names, palette = ["cat", "television monitor", "background"], make_palette(3)
    legend = [(n, tuple(int(c) for c in palette[i])) for i, n in enumerate(names)]
    fig = side_by_side([("Input", image), ("CLIP-DINOiser", image)], legend)
    scale = min(1.0, 1600 / w)
    panel_h = round(h * scale)
    size = text_px(panel_h)
    pad = max(4, size // 3)
    strip = fig[-(size + 2 * pad):]  # the legend below the panels
    rows = np.flatnonzero(strip.min(axis=(1, 2)) < 60)
    assert 0.03 <= (rows.max() - rows.min() + 1) / panel_h <= 0.08
    assert fig.shape[1] >= round(w * scale)  # panels shown at (at most 1,600 px) full width
    with_legend = add_legend(image, names, palette, [0, 1, 2])
    column = with_legend[:, w:]
    rows = np.flatnonzero(column.min(axis=(1, 2)) < 60)
    first_row = rows[rows < rows.min() + text_px(h) + 1]
    assert 0.03 <= (first_row.max() - first_row.min() + 1) / h <= 0.08


@torch.no_grad()
def test_query_correlations_are_the_models_for_that_patch(model_cfg, tiny_teachers):
    from clip_dinoiser.engine.evaluation.inference import query_correlations, resize_keep_ratio, to_tensor

    image = random_image(100, 150, seed=2)
    model = build_model(model_cfg)
    x, y = 120, 30  # resized to 64 x 96 (scale 256, 64): patch (row 1, col 4) of a 4 x 6 grid
    maps = query_correlations(model, image, (x, y), scale=(256, 64))
    full, row = maps["CLIP-DINOiser"]
    resized = to_tensor(resize_keep_ratio(image, (256, 64)))[None]
    corrs, _ = model.heads(model.backbone(resized, with_dense=False).inter)
    torch.testing.assert_close(row.flatten(), corrs[0, 1 * 6 + 4])
    assert row[1, 4].item() == pytest.approx(1.0, abs=1e-5)  # a patch's cosine with itself
    assert full.shape == (100, 150) and full[y, x] == pytest.approx(1.0, abs=1e-5)
    name, path = model_cfg["clip"]["name"], model_cfg["clip"]["pretrained"]
    dino_model = build_model({"name": "dino_maskclip", "clip": {"name": name, "pretrained": path},
                              "teachers": tiny_teachers, "text_cache": None})
    (dfull, drow), = query_correlations(dino_model, image, (x, y), scale=(256, 64)).values()
    torch.testing.assert_close(drow.flatten(), dino_model.dino.correlations(resized)[0, 1 * 6 + 4])
    with pytest.raises(ValueError, match=r"query=\[150,30\] is outside the 150x100 image"):
        query_correlations(model, image, (150, 30))


@pytest.mark.slow  # tool processes, ~15-25 s: the default run's budget (README: Test)
def test_demo_on_a_folder_skips_a_corrupt_file_and_builds_the_model_once(tmp_path, clip_json, tiny_clip_file,
                                                                         tiny_heads_file):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(random_image(40 + 8 * i, 64, seed=i)).save(folder / f"img{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    model = [f"model.clip.name={clip_json}", f"model.clip.pretrained={tiny_clip_file[1]}",
             f"model.checkpoint={tiny_heads_file}", "model.proj_dim=16"]
    r = run_demo(tmp_path, "image=photos", "prompts=[cat,background]", "output=out", *model)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"img{i}_{k}.png" for i in range(4)
                                                          for k in ("mask", "labels", "figure"))
    assert r.stdout.count("model ready") == 1 and r.stdout.count("skipped: cannot read image") == 1
    assert "segmented 4 image(s) into out; skipped 1 unreadable: photos/broken.jpg" in r.stdout
    globbed = run_demo(tmp_path, 'image="photos/img[01].jpg"', "prompts=[cat]", "output=glob", "figure=false", *model)
    assert globbed.returncode == 0 and sorted(os.listdir(tmp_path / "glob")) == [
        "img0_labels.png", "img0_mask.png", "img1_labels.png", "img1_mask.png"]
    queried = run_demo(tmp_path, "image=photos/img0.jpg", "prompts=[cat]", "output=q", "query=[10,20]", *model)
    assert queried.returncode == 0, queried.stderr[-2000:]
    with_query = Image.open(tmp_path / "q" / "img0_figure.png")
    without = Image.open(tmp_path / "out" / "img0_figure.png")
    assert with_query.width > without.width  # the correlation panel was added
