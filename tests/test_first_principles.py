"""The method recomputed from first principles, never from our modules: the heads from ``F.conv2d``
on an explicitly replicate-padded input, the classifier from open_clip's own ``encode_text``, the
pooling and the background rule in plain tensor operations, the optimizer's rates read from the
optimizer after real steps, FOUND from timm's modules on an input zero-padded by hand.

The models are the tools' (``tests/test_paper.py`` composes their hydra configs); the constants
are literals (their sources: the table in ``tests/test_paper.py``).
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from clip_dinoiser.errors import UserError
from clip_dinoiser.models import DINOiserHeads, build_model, load_heads
from clip_dinoiser.models.pooling import guided_pooling

from .conftest import write_heads
from .test_paper import compose_tool, tiny_overrides, train_overrides

GAMMA, DELTA, TEMPERATURE = 0.2, 0.99, 100.0  # configs/clip_dinoiser.yaml, maskclip.py cls_seg (REF)
CLIP_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
CLIP_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # DINO / FOUND normalisation
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
NAMES = ["cat", "background", "dog"]  # background not first: found by name


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory) -> str:
    """Paper-sized heads (proj_dim 256) for the tiny CLIP; objectness bias 0 so that the foreground
    test goes both ways."""
    def adjust(heads: DINOiserHeads) -> None:
        heads.bkg_decoder.bias.zero_()
        heads.bkg_decoder.weight.mul_(8.0)

    return write_heads(tmp_path_factory.mktemp("fp_heads"), proj_dim=256, seed=21, adjust=adjust)


@pytest.fixture(scope="module")
def model(tiny_clip_file, heads_file):
    """tools/eval.py's model (its composed config), with the tiny CLIP's weights."""
    m = build_model(compose_tool("eval", *tiny_overrides(tiny_clip_file, heads_file)).model)
    m.set_vocabulary(NAMES)
    return m


def images_of(h: int, w: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x[:, :, : h // 2, : w // 3] = torch.rand(n, 3, 1, 1, generator=g)  # flat regions: patches that correlate
    return x


def correlations_by_hand(inter: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mode: str) -> torch.Tensor:
    """Conv2d 3x3 on an input padded by hand (``mode``), outputs L2-normalised per patch, then P^T P."""
    padded = F.pad(inter, (1, 1, 1, 1), mode=mode)
    proj = F.conv2d(padded, weight, bias).flatten(2)  # B x 256 x N, no padding of the conv's own
    proj = proj / proj.pow(2).sum(dim=1, keepdim=True).sqrt()
    return torch.einsum("bcn,bcm->bnm", proj, proj)


def objectness_by_hand(inter: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    unit = inter / inter.pow(2).sum(dim=1, keepdim=True).sqrt()
    return torch.einsum("bchw,oc->bohw", unit, weight[:, :, 0, 0]) + bias.view(1, -1, 1, 1)


def text_by_hand(clip_model, tokenizer, names: list[str]) -> torch.Tensor:
    """open_clip's ``encode_text`` over the 80 templates: normalised, averaged, normalised again."""
    rows = []
    for name in names:
        feats = clip_model.encode_text(tokenizer([t(name) for t in OPENAI_IMAGENET_TEMPLATES]))
        mean = (feats / feats.norm(dim=-1, keepdim=True)).mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------ inference
def test_heads_read_the_ln2_output_of_the_third_to_last_block(model):
    """A hook on open_clip's own module, at the native 64 x 64 (no resize of the positional embedding)."""
    visual = model.backbone.visual
    block = visual.transformer.resblocks[len(visual.transformer.resblocks) - 3]
    images = images_of(64, 64)
    stash = {}
    hook = block.ln_2.register_forward_hook(lambda m, i, o: stash.__setitem__("ln_2", o))
    try:
        visual((images - CLIP_MEAN) / CLIP_STD)
    finally:
        hook.remove()
    tokens = stash["ln_2"][:, 1:]  # batch-first tokens, class token dropped
    expected = tokens.transpose(1, 2).reshape(2, -1, 4, 4)
    torch.testing.assert_close(model.backbone(images).inter, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 80), (75, 45)])
def test_correlation_head_is_a_replicate_padded_conv_then_cosines(model, size):
    images = images_of(*size)
    inter = model.backbone(images).inter
    w, b = model.heads.obj_proj.weight, model.heads.obj_proj.bias
    expected = correlations_by_hand(inter, w, b, "replicate")
    feats = model.features(images)
    torch.testing.assert_close(feats.corrs, expected, rtol=1e-5, atol=1e-5)
    zeros = correlations_by_hand(inter, w, b, "constant")
    assert (zeros - expected).abs().max() > 1e-2  # the padding decides the border patches' correlations
    wo, bo = model.heads.bkg_decoder.weight, model.heads.bkg_decoder.bias
    torch.testing.assert_close(feats.objectness, objectness_by_hand(inter, wo, bo), rtol=1e-5, atol=1e-5)


def test_text_classifier_is_open_clips_encode_text_over_80_templates(model, tiny_clip_file):
    name, path = tiny_clip_file
    clip_model = open_clip.create_model(name, pretrained=path).eval()
    expected = text_by_hand(clip_model, open_clip.get_tokenizer(name), NAMES)
    torch.testing.assert_close(model.text.embeddings, expected, rtol=1e-5, atol=1e-5)
    dense = model.backbone(images_of(48, 64)).dense
    cos = torch.einsum("bdhw,kd->bkhw", dense / dense.norm(dim=1, keepdim=True), expected)
    torch.testing.assert_close(model.text(dense, TEMPERATURE), TEMPERATURE * cos, rtol=1e-5, atol=1e-4)


def probabilities_by_hand(model, out, text: torch.Tensor, refine=lambda p: p) -> tuple[torch.Tensor, ...]:
    """(refined probabilities B x K x N, background mask, unsure mask, pooled features) from the
    backbone's tensors; ``refine`` (MaskCLIP's refinements) runs before the background rule."""
    heads = model.heads
    corrs = correlations_by_hand(out.inter, heads.obj_proj.weight, heads.obj_proj.bias, "replicate")
    corrs = torch.where(corrs < GAMMA, torch.zeros_like(corrs), corrs)
    f = out.dense.flatten(2)  # B x D x N
    pooled = torch.einsum("bnm,bdm->bdn", corrs, f) / (corrs.sum(dim=2)[:, None, :] + 1e-6)
    cos = torch.einsum("bdn,kd->bkn", pooled / pooled.norm(dim=1, keepdim=True), text)
    probs = refine(torch.softmax(TEMPERATURE * cos, dim=1))
    logits = objectness_by_hand(out.inter, heads.bkg_decoder.weight, heads.bkg_decoder.bias)
    background = (1 / (1 + torch.exp(-logits.flatten(1)))) <= 0.5
    unsure = probs.max(dim=1).values < DELTA
    refined = probs.clone()
    refined[:, NAMES.index("background")][background & unsure] = 1.0
    return refined, background, unsure, pooled


def test_forward_is_guided_pooling_classifier_and_background_rule_by_hand(model, tiny_clip_file):
    """From the backbone's intermediate tensors (dense, inter) to the probabilities, in plain ops:
    with open_clip's class embeddings, then with embeddings a few patches match closely (so that
    the classifier is sure somewhere and the rule goes every way)."""
    from clip_dinoiser.models.text import Classes

    name, path = tiny_clip_file
    text = text_by_hand(open_clip.create_model(name, pretrained=path).eval(), open_clip.get_tokenizer(name), NAMES)
    images = images_of(75, 90, n=3)
    out = model.backbone(images)
    b, _, h, w = out.dense.shape
    expected, _, _, pooled = probabilities_by_hand(model, out, text)
    torch.testing.assert_close(model(images), expected.view(b, len(NAMES), h, w), rtol=1e-4, atol=1e-5)
    close = torch.stack([pooled[0, :, 0], text[1] * pooled[0].norm(dim=0).mean(), pooled[1, :, -1]])
    close = close / close.norm(dim=1, keepdim=True)
    expected, background, unsure, _ = probabilities_by_hand(model, out, close)
    got = model.decode(model.features(images), classes=Classes(model.text.vocabulary, close))
    torch.testing.assert_close(got, expected.view(b, len(NAMES), h, w), rtol=1e-4, atol=1e-5)
    # refined, kept as foreground, kept as sure: every way of the rule was taken
    assert (background & unsure).any() and (~background & unsure).any() and (background & ~unsure).any()


def test_decode_follows_the_settings_it_is_given(model):
    """A benchmark's setting (background rule off, as for Context, whose vocabulary has a
    background class), and MaskCLIP's refinements when switched on (prompt denoising, key
    smoothing with the last layer's keys), recomputed by hand after the pooling and the classifier."""
    from dataclasses import replace

    images = images_of(64, 96, n=2, seed=7)
    feats = model.features(images, keys=True)
    out = model.backbone(images)
    text, shape = model.text.embeddings, (2, len(NAMES), 4, 6)
    raw = []
    with_rule = probabilities_by_hand(model, out, text, refine=lambda p: raw.append(p) or p)[0].view(shape)
    probs = raw[0]  # B x K x N, after the pooling and the classifier
    no_rule = model.decode(feats, replace(model.decoding, bg_refine=False))
    torch.testing.assert_close(no_rule, probs.view(shape), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(no_rule, with_rule)
    class_max = probs.amax(dim=2)  # B x K
    pd = float(class_max.amax(dim=1).min())  # every image keeps its top class, drops those below
    assert (class_max < pd).any()

    def denoise(p):  # classes whose maximum over the image is below pd are removed, the rest renormalised
        q = torch.where(p.amax(dim=2, keepdim=True) >= pd, p, torch.zeros_like(p))
        return q / q.sum(dim=1, keepdim=True)

    # half of the patches are unsure: the threshold halfway between two patches' maxima, none at it
    # (at a patch's own maximum, a rounding of the model's against these products decides its side)
    maxima = probs.amax(dim=1).flatten().sort().values
    ks = float(maxima[len(maxima) // 2 - 1 : len(maxima) // 2 + 1].mean())

    def smooth(p):  # an unsure patch takes the key-similarity-weighted sum of every patch's probabilities
        # (MaskCLIP's code: each key channel normalised over the patches, F.normalize's default dim=1)
        keys = feats.keys / feats.keys.norm(dim=1, keepdim=True)
        smoothed = torch.einsum("bnm,bkm->bkn", keys @ keys.transpose(1, 2), p)
        return torch.where(p.amax(dim=1, keepdim=True) < ks, smoothed, p)

    for setting, refine in ((dict(pd_thresh=pd), denoise), (dict(ks_thresh=ks), smooth)):
        expected = probabilities_by_hand(model, out, text, refine=refine)[0].view(shape)
        got = model.decode(feats, replace(model.decoding, **setting))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got, with_rule, atol=1e-3)  # the refinement changed something


def test_guided_pooling_divides_by_the_weight_sum_plus_1e6():
    feats = torch.tensor([[[[2.0, -4.0]]]], dtype=torch.float64)  # B=1, D=1, 1 x 2 patches
    corrs = torch.full((1, 2, 2), 1e-6, dtype=torch.float64)
    out = guided_pooling(feats, corrs, None)
    expected = (1e-6 * 2.0 + 1e-6 * -4.0) / (2e-6 + 1e-6)
    torch.testing.assert_close(out, torch.full_like(out, expected), rtol=1e-12, atol=0)
    # at gamma, kept (the reference: corrs[corrs < gamma] = 0); below, dropped
    corrs = torch.tensor([[[GAMMA, GAMMA - 1e-9], [0.5, 1.0]]], dtype=torch.float64)
    out = guided_pooling(feats, corrs, GAMMA).flatten()
    expected = [GAMMA * 2.0 / (GAMMA + 1e-6), (0.5 * 2.0 + 1.0 * -4.0) / (1.5 + 1e-6)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------ heads files
@pytest.mark.parametrize("change, named", [
    ("missing", ["bkg_decoder.bias"]),
    ("extra", ["obj_proj.scale"]),
    ("renamed", ["obj_proj.weight", "proj.weight"]),
])
def test_heads_file_with_a_missing_extra_or_renamed_key_is_refused(tmp_path, tiny_clip_file, change, named):
    torch.manual_seed(5)
    state = DINOiserHeads(in_dim=64, proj_dim=256, kernel_size=3).state_dict()
    if change == "missing":
        del state["bkg_decoder.bias"]
    elif change == "extra":
        state["obj_proj.scale"] = torch.ones(1)
    else:
        state["proj.weight"] = state.pop("obj_proj.weight")
    path = str(tmp_path / "last.pt")
    torch.save({"model_state_dict": state}, path)
    heads = DINOiserHeads(in_dim=64, proj_dim=256, kernel_size=3)
    before = {k: v.clone() for k, v in heads.state_dict().items()}
    with pytest.raises(UserError) as refused:
        load_heads(heads, path)
    message = str(refused.value)
    assert "\n" not in message and path in message and all(k in message for k in named)
    assert all(torch.equal(v, before[k]) for k, v in heads.state_dict().items())  # nothing half-loaded
    with pytest.raises(UserError) as refused:  # through the eval tool's model config
        build_model(compose_tool("eval", *tiny_overrides(tiny_clip_file, path)).model)
    assert "\n" not in str(refused.value) and all(k in str(refused.value) for k in named)


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_clip_file, tiny_teachers):
    """tools/train.py's task (its composed config), tiny weights, crops of 64 for speed."""
    from PIL import Image

    from clip_dinoiser.engine.training.train import build_distiller

    from .conftest import random_image

    folder = tmp_path_factory.mktemp("fp_train")
    files = []
    for i in range(2):
        files.append(str(folder / f"{i}.png"))
        Image.fromarray(random_image(80, 96, seed=30 + i)).save(files[-1])
    cfg = compose_tool("train", *train_overrides(tiny_clip_file, tiny_teachers, str(folder)), "train.im_size=64")
    return build_distiller(OmegaConf.to_container(cfg, resolve=True), torch.device("cpu"), files)


def rates(optimizer, heads) -> tuple[float, float]:
    """(obj_proj's, bkg_decoder's) learning rate, each group found by its parameters."""
    def of(module):
        ids = {id(p) for p in module.parameters()}
        (group,) = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} == ids]
        return group["lr"]

    return of(heads.obj_proj), of(heads.bkg_decoder)


def test_learning_rates_per_head_and_decay_at_iteration_5000(task):
    """Two real ``Distiller.step``s, then the scheduler alone up to iteration 5000 (REF: scheduler
    stepped once per iteration, MultiStepLR([5000], 0.1): iteration i runs at the rate after i steps)."""
    heads = task.student.heads
    heads.train()
    optimizer, scheduler = task.make_optimizer()
    assert rates(optimizer, heads) == (5e-5, 1e-2)
    clip_before = [p.clone() for p in task.student.backbone.parameters()]
    heads_before = [p.clone() for p in heads.parameters()]
    g = torch.Generator().manual_seed(3)
    with torch.enable_grad():
        for _ in range(2):
            task.step(torch.rand(2, 3, 64, 64, generator=g), optimizer, scheduler)
    assert scheduler.last_epoch == 2 and rates(optimizer, heads) == (5e-5, 1e-2)
    assert all(not torch.equal(p, q) for p, q in zip(heads.parameters(), heads_before))  # both heads learn
    assert all(torch.equal(p, q) for p, q in zip(task.student.backbone.parameters(), clip_before))  # CLIP frozen
    for _ in range(4999 - 2):
        scheduler.step()
    assert scheduler.last_epoch == 4999 and rates(optimizer, heads) == (5e-5, 1e-2)
    scheduler.step()
    obj, bkg = rates(optimizer, heads)
    assert scheduler.last_epoch == 5000
    assert obj == pytest.approx(5e-6, rel=1e-9) and bkg == pytest.approx(1e-3, rel=1e-9)
    for _ in range(1300):  # to the end of the 6300 iterations: no second decay
        scheduler.step()
    assert rates(optimizer, heads) == (obj, bkg)


def test_the_training_loop_steps_the_schedule_once_per_iteration(task):
    from clip_dinoiser.data.train_images import ResumableBatchSampler
    from clip_dinoiser.engine.training.loop import run_loop

    heads = task.student.heads
    heads.train()
    optimizer, scheduler = task.make_optimizer()
    sampler = ResumableBatchSampler(2, 1, 3, 0)
    tcfg = {"keep_checkpoints": 1, "save_every": 1000, "num_workers": 0, "stop_after": 3}
    with torch.enable_grad():
        done = run_loop(task, sampler, tcfg, None, torch.device("cpu"), 0, 1, 0, optimizer, scheduler)
    assert done == 3 and scheduler.last_epoch == 3
    assert all(int(s["step"]) == 3 for s in optimizer.state.values()) and len(optimizer.state) == 4


# ------------------------------------------------------------------------------------------ FOUND
def found_by_hand(found, images: torch.Tensor) -> torch.Tensor:
    """FOUND's foreground probability as the reference computes it: zero-pad to 16 (REF
    make_input_divisible), normalise, DINO ViT-S/8 through timm's own modules (positional embedding
    resized as DINO does), keys of the last block, FOUND's 1x1 decoder, sigmoid."""
    vit, decoder = found.vit.vit, found.decoder
    h, w = images.shape[-2:]
    x = F.pad(images, (0, (16 - w % 16) % 16, 0, (16 - h % 16) % 16))
    x = vit.patch_embed.proj((x - IMAGENET_MEAN) / IMAGENET_STD)  # B x C x gh x gw
    b, c, gh, gw = x.shape
    side = int((vit.pos_embed.shape[1] - 1) ** 0.5)
    grid = vit.pos_embed[:, 1:].reshape(1, side, side, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic")
    pos = torch.cat([vit.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    x = torch.cat([vit.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + pos
    for block in vit.blocks[:-1]:
        x = block(x)
    last = vit.blocks[-1]
    keys = last.attn.qkv(last.norm1(x))[:, 1:, c : 2 * c]  # q | k | v, all heads; class token dropped
    logits = F.conv2d(keys.transpose(1, 2).reshape(b, c, gh, gw), decoder.weight, decoder.bias)
    return torch.sigmoid(logits)


@pytest.mark.parametrize("size, found_grid, clip_grid", [
    ((375, 500), (48, 64), (24, 32)),  # a VOC image: the reference's 64 x 48, not 63 x 47
    ((205, 448), (26, 56), (13, 28)),  # a window of DINO-MaskCLIP on a 205-pixel-high image
])
def test_found_pads_to_16_as_the_reference(tiny_teachers, size, found_grid, clip_grid):
    from clip_dinoiser.teachers import build_teachers

    found = build_teachers({"found": tiny_teachers["found"]})["found"]
    images = images_of(*size, n=1, seed=4)
    expected = found_by_hand(found, images)
    assert tuple(expected.shape[-2:]) == found_grid
    probs = found.probabilities(images)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-5)
    resized = F.interpolate(expected, size=clip_grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(found.probabilities(images, clip_grid), resized, rtol=1e-5, atol=1e-5)
    target = found.target(images, clip_grid, GAMMA)
    sure = (resized - 0.5).abs() > 1e-4
    assert torch.equal(target[sure], (resized[sure] > 0.5).float()) and 0 < target.mean() < 1


def test_dino_maskclip_objectness_on_a_205_pixel_window(tiny_clip_file, tiny_teachers):
    name, path = tiny_clip_file
    model = build_model({"name": "dino_maskclip", "clip": {"name": name, "pretrained": path},
                         "teachers": tiny_teachers})
    images = images_of(205, 448, n=1, seed=5)
    objectness = model.features(images).objectness
    expected = F.interpolate(found_by_hand(model.found, images), size=(13, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch.sigmoid(objectness), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ inputs
def test_demo_images_are_rgb_over_255():
    """The demo's and the query's image tensor (``to_tensor``): H x W x 3 uint8 -> 3 x H x W / 255."""
    import numpy as np

    from clip_dinoiser.engine.evaluation.inference import to_tensor

    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) / 255.0
    torch.testing.assert_close(to_tensor(image), expected, rtol=0, atol=1e-7)


def test_training_item_depends_only_on_its_index_and_seed(tmp_path):
    """Crops (both offsets, on a portrait and a landscape image), flip and brightness come from
    the item's seed alone, whatever the global random state (a resumed run sees the same batches)."""
    from PIL import Image

    from clip_dinoiser.data.train_images import TrainImages

    from .conftest import random_image

    files = []
    for i, (h, w) in enumerate(((90, 40), (40, 90))):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(random_image(h, w, seed=40 + i)).save(files[-1])
    images = TrainImages(files, 32)
    for index in (0, 1):
        torch.manual_seed(1)
        first = images[(index, 77)]
        torch.manual_seed(2)
        torch.rand(100)
        assert torch.equal(images[(index, 77)], first)
    assert not torch.equal(images[(0, 77)], images[(0, 78)])


def test_distiller_resizes_training_images_as_configured(task):
    """``train.antialias`` reaches the dataset (the paper's false, and true when asked for)."""
    from clip_dinoiser.engine.training.train import Distiller

    assert task.dataset().antialias is False and task.dataset().size == 64
    settings = {**task.settings, "antialias": True, "im_size": 96}
    other = Distiller(task.student, task.teachers, gamma=GAMMA, settings=settings, files=task.files).dataset()
    assert (other.antialias, other.size) == (True, 96)


def test_binary_targets_at_exact_ties_follow_the_reference(tiny_teachers, monkeypatch):
    """Ties decide a bit: DINO's target keeps a correlation equal to gamma (the reference zeroes
    those below gamma, then keeps what is > 0), FOUND's drops a probability equal to 0.5 (> 0.5)."""
    from clip_dinoiser.teachers import build_teachers

    teachers = build_teachers(tiny_teachers)
    dino, found = teachers["dino"], teachers["found"]
    corrs = torch.tensor([[[0.2, 0.19999, 0.0, -0.3], [1.0, 0.2000001, 0.25, 0.1]]])
    monkeypatch.setattr(dino, "correlations", lambda images: corrs)
    target = dino.target(torch.zeros(1, 3, 16, 32), (1, 2), 0.2)
    assert target.tolist() == [[[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]]
    probs = torch.tensor([[[[0.5, 0.5000001], [0.4999999, 1.0]]]])
    monkeypatch.setattr(found, "probabilities", lambda images, size=None: probs)
    assert found.target(torch.zeros(1, 3, 16, 16), (2, 2), 0.2).tolist() == [[[[0.0, 1.0], [0.0, 1.0]]]]
