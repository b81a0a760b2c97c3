"""CUDA behaviour (skipped without a GPU): same results as the CPU, bf16 close to fp32."""

from __future__ import annotations

import os

import pytest
import torch

from clip_dinoiser.data.benchmarks import BENCHMARKS
from clip_dinoiser.engine.evaluation.evaluate import evaluate_benchmark
from clip_dinoiser.engine.evaluation.inference import SlideConfig
from clip_dinoiser.models import build_model

from .synthetic_data import make_benchmark

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SLIDE = SlideConfig(scale=(256, 64), crop=(64, 64), stride=(32, 32), window_batch=8)


@pytest.fixture()
def model(model_cfg):
    m = build_model(model_cfg)
    m.set_vocabulary(["cat", "dog", "background"])
    return m


@torch.no_grad()
def test_cuda_fp32_equals_cpu(model):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    images = torch.rand(3, 3, 64, 96)
    cpu = model(images)
    gpu = model.cuda()(images.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_cuda_bf16_close_to_fp32(model):
    model = model.cuda()
    images = torch.rand(4, 3, 128, 128, device="cuda")
    ref = model(images)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = model(images)
    assert low.dtype == torch.float32
    agree = (ref.argmax(1) == low.argmax(1)).float().mean().item()
    assert agree > 0.9, agree


def test_cuda_evaluation_matches_cpu(model, tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    root = make_benchmark(str(tmp_path), "voc", n=3)
    cpu = evaluate_benchmark(model, BENCHMARKS["voc"], root, slide=SLIDE, num_workers=0, progress=False)
    gpu = evaluate_benchmark(model.cuda(), BENCHMARKS["voc"], root, slide=SLIDE, num_workers=2, progress=False)
    assert gpu.miou == pytest.approx(cpu.miou, abs=0.05)
    bf16 = evaluate_benchmark(model, BENCHMARKS["voc"], root, slide=SLIDE, precision="bf16", num_workers=0,
                              progress=False)
    assert abs(bf16.miou - cpu.miou) < 2.0


def test_cuda_training_step_bf16(tmp_path, tiny_clip_file, tiny_teachers):
    from clip_dinoiser.engine.training.train import train

    from .conftest import write_images
    from .test_train import train_config

    write_images(str(tmp_path / "imgs"), 6)
    cfg = train_config(tmp_path, tiny_clip_file, tiny_teachers)
    cfg["precision"] = "bf16"
    last = train(cfg, torch.device("cuda"))
    assert os.path.isfile(last)


def test_cuda_confusion_counts_are_exact_for_171_classes():
    from mmseg.evaluation import IoUMetric

    from clip_dinoiser.engine.evaluation.evaluate import area_stats, confusion_index, confusion_matrix

    from .test_eval import all_pairs

    k = 171
    pred, label, counts = all_pairs(k)
    conf = confusion_matrix(confusion_index(pred.cuda(), label.cuda(), k), k)
    assert conf.device.type == "cuda"
    assert torch.equal(conf.cpu(), torch.from_numpy(counts))
    theirs = torch.stack(IoUMetric.intersect_and_union(pred.cuda(), label.cuda().long(), k, 255))
    assert torch.equal(area_stats(pred.cuda(), label.cuda(), k).cpu(), theirs.long())


def test_cuda_maskclip_plus_training_bf16(tmp_path, tiny_clip_file, tiny_heads_file):
    """MaskCLIP+ on the GPU in bf16 (annotator and target under autocast): a finite loss, last.pt written."""
    import json

    from clip_dinoiser.engine.training import target_train

    from .test_maskclip_plus import target_config, voc_without_labels

    root = voc_without_labels(str(tmp_path / "data"))
    cfg = target_config(tmp_path, tiny_clip_file, tiny_heads_file, root, iterations=3, self_train_from=None)
    cfg["precision"] = "bf16"
    last = target_train.train(cfg, torch.device("cuda"))
    assert os.path.isfile(last)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
