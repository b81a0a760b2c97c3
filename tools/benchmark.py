"""Throughput benchmarks (not tests): evaluation and training, with ratios measured in one run.

    python tools/benchmark.py eval  [--device cuda] [--images 400]
    python tools/benchmark.py train [--device cuda] [--iters 30]
    python tools/benchmark.py startup [--repeat 3]     # time to a ready model, cold and warm text cache
    python tools/benchmark.py cpu [--repeat 3] [--paths fp32,bf16,compile,onnxruntime] [--miou-images 8]
    python tools/benchmark.py all --json out.json        # a new file (--overwrite to replace one)

Models are ViT-B/16-sized with random weights (speed does not depend on the weights):
CLIP ViT-B-16 (open_clip), DINO ViT-B/16 and ViT-S/8 (timm). Every figure is measured in the
same process, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from clip_dinoiser.config import CLIPConfig, SlideConfig
from clip_dinoiser.data.benchmarks import BENCHMARKS, build_dataset
from clip_dinoiser.engine.evaluation.evaluate import Decoded, Evaluator, loader_items, score_images, unpack_batch
from clip_dinoiser.engine.evaluation.inference import SlidingWindows, autocast
from clip_dinoiser.engine.job.cli import resolve_device, user_errors_as_one_line
from clip_dinoiser.files import check_output_file, write_atomic
from clip_dinoiser.models import CLIPDINOiser, DINOiserHeads, build_model, read_vocabulary_file
from clip_dinoiser.values import COUNT, NON_NEGATIVE_INT


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or "cpu" (recorded with every figure)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def timed(fn: Callable[[], object], device: torch.device, *, warmup: int, repeat: int) -> float:
    """Seconds per call of ``fn`` (median of ``repeat`` after ``min(warmup, repeat)`` calls)."""
    for _ in range(min(warmup, repeat)):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def build_dinoiser(device: torch.device, clip: str = CLIPConfig.name) -> CLIPDINOiser:
    """CLIP-DINOiser with random weights; ``clip`` is an open_clip model name or config JSON."""
    model = build_model({"name": "clip_dinoiser", "clip": {"name": clip, "pretrained": None}, "checkpoint": None,
                         "text_cache": None}).to(device)
    model.set_vocabulary(read_vocabulary_file(BENCHMARKS["voc"].vocabulary_file))
    return model


def write_voc_like(folder: str, n: int, seed: int = 0) -> str:
    """A synthetic VOC 2012 folder: ``n`` 500x375 / 375x500 JPEGs, labels and val.txt."""
    root = os.path.join(folder, "VOCdevkit", "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        h, w = (375, 500) if i % 3 else (500, 375)
        img = np.clip(rng.normal(120, 60, (h // 25, w // 25, 3)), 0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))
        label = rng.integers(0, 21, (h // 25, w // 25)).astype(np.uint8)
        label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
        ids.append(f"2008_{i:06d}")
        Image.fromarray(img).save(os.path.join(root, "JPEGImages", f"{ids[-1]}.jpg"), quality=90)
        Image.fromarray(label).save(os.path.join(root, "SegmentationClass", f"{ids[-1]}.png"))
    with open(os.path.join(root, "ImageSets/Segmentation/val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return root


def bench_eval(device: torch.device, n_images: int, window_batch: int, workers: int, clip: str, repeat: int) -> dict:
    slide = SlideConfig(window_batch=window_batch)
    with Evaluator(slide=slide, num_workers=workers, progress=False) as evaluator:  # before CUDA and the model
        return _bench_eval(evaluator, device, n_images, window_batch, clip, repeat)


def _bench_eval(evaluator: Evaluator, device: torch.device, n_images: int, window_batch: int, clip: str,
                repeat: int) -> dict:
    model = build_dinoiser(device, clip)
    slide = evaluator.slide
    out: dict = {"device": device_name(device)}
    wins = torch.rand(window_batch, 3, 448, 448, device=device)
    for precision in ("fp32", "bf16"):
        with torch.no_grad():
            def backbone_only(precision=precision):
                with autocast(device, precision):
                    model.backbone(wins, with_inter=False)

            def model_forward(precision=precision):
                with autocast(device, precision):
                    model(wins)

            def one_window_at_a_time(precision=precision):  # the reference's slide loop: one 448x448 window per call
                with autocast(device, precision):
                    for i in range(len(wins)):
                        model(wins[i : i + 1])

            for key, fn in (("backbone_windows_per_s", backbone_only), ("model_windows_per_s", model_forward),
                            ("one_window_at_a_time_per_s", one_window_at_a_time)):
                out[f"{key}_{precision}"] = window_batch / timed(fn, device, warmup=3, repeat=repeat)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_voc_like(tmp, n_images)
        bench = BENCHMARKS["voc"]

        def pipeline(precision: str, limit: int | None = None):
            evaluator.precision, evaluator.limit = precision, limit
            return evaluator.evaluate(model, bench, root)

        # First call of the process (the loader processes started before the model, as in tools/eval.py).
        r = pipeline("bf16")
        out["first_call_pipeline_windows_per_s_bf16"] = r.windows / r.seconds
        # Data loading alone (decode, resize, labels, transfer to this process), same loader.
        dataset = build_dataset(bench, root)
        items = loader_items(bench, dataset, slide.scale, range(len(dataset)))
        t = time.perf_counter()
        count = sum(len(b["shapes"]) // 2 for b in evaluator.batches(items))
        out["loader_only_images_per_s"] = count / (time.perf_counter() - t)
        # Everything after loading, on GPU-resident images: the ceiling of the pipeline.
        resident = [[(img.to(device), gt.to(device), size, None)
                     for img, gt, size in zip(*unpack_batch(b["data"], b["shapes"]), b["ori_shape"])]
                    for b in evaluator.batches(items)]
        for precision in ("fp32", "bf16"):
            pipeline(precision, limit=min(32, n_images))  # warm-up
            r = pipeline(precision)
            out[f"pipeline_images_per_s_{precision}"] = r.images_per_s
            out[f"pipeline_windows_per_s_{precision}"] = r.windows / r.seconds
            backbone = out[f"backbone_windows_per_s_{precision}"]
            out[f"pipeline_over_backbone_{precision}"] = (r.windows / r.seconds) / backbone

            def resident_pass(precision=precision, setting=evaluator.setting(model, bench)) -> int:
                runner = SlidingWindows(Decoded(model, [setting]), slide, precision)
                score_images(runner, resident, [bench.num_classes], device)
                return runner.windows

            windows = resident_pass()
            sec = timed(resident_pass, device, warmup=0, repeat=3)
            out[f"resident_images_windows_per_s_{precision}"] = windows / sec
            out[f"resident_images_over_backbone_{precision}"] = windows / sec / backbone
    out["bf16_pipeline_over_fp32_one_window_at_a_time"] = (
        out["pipeline_windows_per_s_bf16"] / out["one_window_at_a_time_per_s_fp32"])
    return out


def heads_task(device: torch.device):
    """CLIP-DINOiser with the paper's teachers (ViT-B/16-sized, random weights), and its optimizer."""
    from clip_dinoiser.config import TrainSettings, paper_teachers, plain
    from clip_dinoiser.engine.training.train import make_optimizer
    from clip_dinoiser.teachers import DINOTeacher, FOUNDTeacher, FrozenViT, load_timm_vit

    model = build_dinoiser(device)
    t = paper_teachers()
    dino = DINOTeacher(FrozenViT(load_timm_vit(t["dino"].arch, None))).to(device)
    found_vit = FrozenViT(load_timm_vit(t["found"].arch, None))
    found = FOUNDTeacher(found_vit, torch.nn.Conv2d(found_vit.dim, 1, 1), antialias=False).to(device)
    teachers = {"dino": dino, "found": found}
    return model, teachers, make_optimizer(model.heads, teachers, plain(TrainSettings(data="", output="unused")))


def bench_train(device: torch.device, iters: int, batch: int, workers: int, n_images: int) -> dict:
    from clip_dinoiser.engine.training.train import Distiller

    model, teachers, (optimizer, scheduler) = heads_task(device)
    images = torch.rand(batch, 3, 448, 448, device=device)
    out: dict = {"device": device_name(device), "batch": batch}
    for precision in ("fp32", "bf16"):
        distiller = Distiller(model, teachers, gamma=model.decoding.gamma, precision=precision)
        step = functools.partial(distiller.step, optimizer=optimizer, scheduler=scheduler)
        # CLIP, DINO ViT-B/16, ViT-S/8 at 448
        sec = timed(lambda step=step: step(images), device, warmup=3, repeat=iters)
        out[f"step_iters_per_s_{precision}"] = 1 / sec
        out[f"projected_6300_iters_minutes_{precision}"] = 6300 * sec / 60
    out["bf16_over_fp32"] = out["step_iters_per_s_bf16"] / out["step_iters_per_s_fp32"]

    # The whole loop (JPEG decoding, augmentations, data loader) on a synthetic image folder.
    from torch.utils.data import DataLoader

    from clip_dinoiser.data.train_images import ResumableBatchSampler, TrainImages

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        rng = np.random.default_rng(0)
        for i in range(n_images):
            img = np.clip(rng.normal(120, 60, (15, 20, 3)), 0, 255).astype(np.uint8)
            files.append(os.path.join(tmp, f"{i}.JPEG"))
            Image.fromarray(img).resize((500, 375), Image.BICUBIC).save(files[-1], quality=90)
        dataset = TrainImages(files, 448)
        dataset[(0, 0)]
        t = time.perf_counter()
        for i in range(16):
            dataset[(i, i)]
        out["augment_ms_per_image_main_process"] = (time.perf_counter() - t) / 16 * 1000

        def make_loader():
            return DataLoader(dataset, num_workers=workers, pin_memory=True, prefetch_factor=4,
                              batch_sampler=ResumableBatchSampler(len(files), batch, 1000, 0))

        it = iter(make_loader())
        for _ in range(5):
            next(it)
        t = time.perf_counter()
        for _ in range(3 * iters):
            next(it)
        out["loader_only_iters_per_s"] = 3 * iters / (time.perf_counter() - t)
        del it
        loader = make_loader()
        step = functools.partial(Distiller(model, teachers, gamma=model.decoding.gamma, precision="bf16").step,
                                 optimizer=optimizer)
        it = iter(loader)
        for _ in range(5):
            next(it)
        sync(device)
        t = time.perf_counter()
        for _ in range(3 * iters):
            step(next(it).to(device, non_blocking=True))
        sync(device)
        sec = (time.perf_counter() - t) / (3 * iters)
        out["loop_iters_per_s_bf16"] = 1 / sec
        out["loop_projected_6300_iters_minutes_bf16"] = 6300 * sec / 60
    return out


def bench_target(device: torch.device, iters: int, batch: int, crop: int) -> dict:
    """MaskCLIP+ training steps (annotator pass + DeepLabv2-R101 forward/backward + SGD) next to
    the heads' distillation step, same batch and image size, in one run (random weights; speed
    does not depend on them). ``crop``: MaskCLIP+'s is 512 (480 for Context)."""
    from clip_dinoiser.config import TargetConfig, TargetTrainSettings, plain
    from clip_dinoiser.engine.training.target_train import TargetTraining
    from clip_dinoiser.engine.training.train import Distiller
    from clip_dinoiser.models.target import build_target

    model, teachers, (heads_opt, heads_sched) = heads_task(device)
    annotator = build_dinoiser(device)  # frozen by the target task: not the heads' model
    target = build_target(TargetConfig(pretrained=None), annotator.text.dim).to(device).train()
    target.set_classes(annotator.text.current.embeddings)
    settings = plain(TargetTrainSettings(iterations=1000, output="unused"))
    images = torch.rand(batch, 3, crop, crop, device=device)
    valid = torch.ones(batch, crop, crop, dtype=torch.bool, device=device)
    out: dict = {"device": device_name(device), "batch": batch,
                 "crop": crop}
    for precision in ("fp32", "bf16"):
        task = TargetTraining(target, annotator, settings, [], list(annotator.class_names), precision=precision)
        optimizer, scheduler = task.make_optimizer()

        def step(task=task, optimizer=optimizer, scheduler=scheduler) -> None:
            loss, _ = task.losses((images, valid), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

        sec = timed(step, device, warmup=2, repeat=iters)
        out[f"target_step_iters_per_s_{precision}"] = 1 / sec
        out[f"projected_4000_iters_minutes_{precision}"] = 4000 * sec / 60
        distiller = Distiller(model, teachers, gamma=model.decoding.gamma, precision=precision)
        heads = timed(lambda d=distiller: d.step(images, heads_opt, heads_sched), device, warmup=2, repeat=iters)
        out[f"heads_step_iters_per_s_{precision}"] = 1 / heads
        out[f"target_step_over_heads_step_{precision}"] = heads / sec
    return out


def bench_sweep(device: torch.device, n_images: int, workers: int, clip: str, gammas: int = 5) -> dict:
    """Wall time of an inference sweep of ``gammas`` values of ``model.gamma`` (one network pass
    per window, ``Evaluator.evaluate_settings``) against one evaluation at one setting, on the
    same synthetic VOC set in one run; and whether each setting's result equals its own run."""
    values = [round(0.1 * (i + 1), 2) for i in range(gammas)]
    with Evaluator(num_workers=workers, progress=False) as evaluator, tempfile.TemporaryDirectory() as tmp:
        model = build_dinoiser(device, clip)
        root, bench = write_voc_like(tmp, n_images), BENCHMARKS["voc"]
        evaluator.limit = 2
        evaluator.evaluate(model, bench, root)  # warm-up (loader processes, first calls)
        evaluator.limit = None
        t = time.perf_counter()
        single = evaluator.evaluate(model, bench, root)
        sync(device)
        single_s = time.perf_counter() - t
        settings = [evaluator.setting(model, bench, gamma=g) for g in values]
        t = time.perf_counter()
        swept = evaluator.evaluate_settings(model, bench, root, settings)
        sync(device)
        sweep_s = time.perf_counter() - t
    default = values.index(model.decoding.gamma) if model.decoding.gamma in values else None
    return {"device": device_name(device),
            "threads": torch.get_num_threads(), "images": n_images, "gammas": values, "single_s": single_s,
            "sweep_s": sweep_s, "sweep_over_single": sweep_s / single_s, "single_over_five_runs": sweep_s / (
                gammas * single_s), "default_gamma_equal_to_single_run": None if default is None else (
                swept[default].miou == single.miou and swept[default].class_iou == single.class_iou),
            "miou_per_gamma": [r.miou for r in swept]}


STARTUP_PROMPTS = ["cat", "sofa", "television monitor", "potted plant", "background"]


def bench_startup(clip: str, repeat: int) -> dict:
    """Seconds to a ready model (CLIP from a local file, heads, 5 prompts encoded): cold (empty
    text cache) and warm (cache filled), against open_clip's ``create_model`` + ``load_state_dict``
    of the same file alone. Best of ``repeat`` runs each (the file is in the page cache for all)."""
    import open_clip

    from clip_dinoiser.config import ModelConfig
    from clip_dinoiser.models import save_heads
    from clip_dinoiser.models.backbone import register_model_config

    name = register_model_config(clip)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        reference = open_clip.create_model(name)
        weights = os.path.join(tmp, "clip.pt")
        torch.save(reference.state_dict(), weights)
        heads = os.path.join(tmp, "last.pt")
        save_heads(DINOiserHeads(in_dim=reference.visual.transformer.width, proj_dim=ModelConfig.proj_dim,
                                 kernel_size=ModelConfig.kernel_size), heads)
        del reference

        def baseline(_cache: str) -> None:
            model = open_clip.create_model(name)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

        def ready(cache: str) -> None:
            model = build_model({"name": "clip_dinoiser", "clip": {"name": clip, "pretrained": weights},
                                 "checkpoint": heads, "text_cache": cache})
            model.set_vocabulary(STARTUP_PROMPTS)

        def best(fn: Callable[[str], None], caches: list[str]) -> float:
            times = []
            for cache in caches:
                t = time.perf_counter()
                fn(cache)
                times.append(time.perf_counter() - t)
            return min(times)

        base = best(baseline, [""] * repeat)
        cold = best(ready, [os.path.join(tmp, f"cold{i}") for i in range(repeat)])  # a new, empty cache each time
        warm = best(ready, [os.path.join(tmp, "cold0")] * repeat)  # the cache the first cold run filled
    return {"threads": torch.get_num_threads(), "prompts": len(STARTUP_PROMPTS), "baseline_s": base,
            "cold_s": cold, "warm_s": warm, "cold_vs_baseline": cold / base, "warm_vs_baseline": warm / base}


CPU_PATHS = ("fp32", "bf16", "compile", "onnxruntime")


def cpu_flags() -> dict:
    """The CPU's model name, PyTorch's capability string and its bf16-relevant flags (``lscpu``'s)."""
    from clip_dinoiser.precision import cpu_has_native_bf16

    info = {"capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        info.update(model=model, flags=sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))))
    except OSError:
        pass
    return info


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeat: int = 3) -> float:
    """GFLOP/s of an n x n by n x n product in ``dtype`` as the model's layers run it (``F.linear``:
    the second factor K-contiguous), median of ``repeat`` after one warm-up: the practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    sec = timed(lambda: torch.nn.functional.linear(a, b), torch.device("cpu"), warmup=1, repeat=repeat)
    return 2 * n**3 / sec / 1e9


def synthetic_photo(h: int = 375, w: int = 500, seed: int = 0) -> np.ndarray:
    """A VOC-sized RGB photo stand-in (smooth colour fields with noise, as ``write_voc_like``'s)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(120, 60, (h // 25, w // 25, 3)), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def cpu_runners(model: torch.nn.Module, paths: list[str], tmp: str) -> dict[str, tuple[torch.nn.Module, str, float]]:
    """Per path: (the window model, its autocast precision, seconds to set it up: compile, export)."""
    from clip_dinoiser.engine.evaluation.export import SessionWindows, export_onnx, onnx_session

    runners = {}
    for path in paths:
        t = time.perf_counter()
        if path in ("fp32", "bf16"):
            runners[path] = (model, path, 0.0)
            continue
        if path == "compile":
            runners[path] = (torch.compile(model), "fp32", time.perf_counter() - t)  # compiled at its first call
            continue
        onnx = os.path.join(tmp, "segmenter.onnx")
        export_onnx(model, onnx)
        runners[path] = (SessionWindows(onnx_session(onnx)), "fp32", time.perf_counter() - t)
    return runners


def photo_probabilities(runner: torch.nn.Module, photo: np.ndarray, precision: str) -> torch.Tensor:
    """The test-time pipeline (resize, windows, averaging, resize to the photo) on one photo: K x H x W."""
    from clip_dinoiser.engine.evaluation.inference import resize_keep_ratio, slide_inference, to_tensor

    with torch.no_grad():
        (probs,) = slide_inference(runner, [to_tensor(resize_keep_ratio(photo))], out_sizes=[photo.shape[:2]],
                                   precision=precision)
    return probs


def fidelity(probs: torch.Tensor, reference: torch.Tensor, objectness: np.ndarray) -> dict:
    """Argmax agreement with the fp32 reference: on all pixels; on those without a near-tie (fp32
    top-two margin above 1e-2); on those without a near-tie of the background rule either (fp32
    objectness, window-averaged, more than 1e-2 from 0.5: the rule flips a patch's background
    probability to 1 on either side of it); and the largest probability difference."""
    top2 = reference.topk(2, dim=0).values
    clear = top2[0] - top2[1] > 1e-2
    rule_clear = clear & torch.from_numpy(np.abs(objectness - 0.5) > 1e-2)
    agree = probs.argmax(0) == reference.argmax(0)
    return {"agreement": float(agree.float().mean()), "agreement_margin_1e-2": float(agree[clear].float().mean()),
            "agreement_margin_and_objectness_1e-2": float(agree[rule_clear].float().mean()),
            "pixels_margin_and_objectness_1e-2": float(rule_clear.float().mean()),
            "max_abs_dprob": float((probs - reference).abs().max())}


def bench_cpu_miou(clip: str, n_images: int, workers: int) -> dict:
    """Evaluation mIoU of fp32 and bf16 on ``n_images`` synthetic VOC images (random ViT-B/16-sized
    weights, random heads, VOC's 21 classes with its background refinement), in one run."""
    out: dict = {"images": n_images}
    with Evaluator(num_workers=workers, progress=False) as evaluator, tempfile.TemporaryDirectory() as tmp:
        model, root = build_dinoiser(torch.device("cpu"), clip), write_voc_like(tmp, n_images)
        for precision in ("fp32", "bf16"):
            evaluator.precision = precision
            r = evaluator.evaluate(model, BENCHMARKS["voc"], root)
            out[f"miou_{precision}"], out[f"seconds_{precision}"] = r.miou, r.seconds
    out["miou_bf16_minus_fp32"] = out["miou_bf16"] - out["miou_fp32"]
    return out


def bench_cpu(clip: str, repeat: int, paths: list[str]) -> dict:
    """CPU inference paths on one 500 x 375 photo (two 448 windows), in one run: seconds per image
    and per window, achieved GFLOP/s against the same run's large-matmul GFLOP/s, fidelity against
    fp32, and the cold start of a first result (model ready + text tower, path set-up, first photo)."""
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from clip_dinoiser.engine.evaluation.inference import segment_panels
    from clip_dinoiser.models import save_heads
    from clip_dinoiser.models.backbone import register_model_config

    out: dict = {"cpu": cpu_flags(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    out["matmul_gflops_fp32"] = matmul_gflops(torch.float32)
    out["matmul_gflops_bf16"] = matmul_gflops(torch.bfloat16)
    out["matmul_bf16_over_fp32"] = out["matmul_gflops_bf16"] / out["matmul_gflops_fp32"]
    print(json.dumps(out), flush=True)
    photo, vocabulary = synthetic_photo(), read_vocabulary_file(BENCHMARKS["voc"].vocabulary_file)
    with tempfile.TemporaryDirectory() as tmp:
        name = register_model_config(clip)
        torch.manual_seed(0)
        weights, heads = os.path.join(tmp, "clip.pt"), os.path.join(tmp, "last.pt")
        torch.save(open_clip.create_model(name).state_dict(), weights)
        model = build_model({"name": "clip_dinoiser", "clip": {"name": clip, "pretrained": weights},
                             "checkpoint": None, "text_cache": None})
        save_heads(model.heads, heads)
        t = time.perf_counter()
        open_clip.create_model(name).load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        out["bare_open_clip_load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model = build_model({"name": "clip_dinoiser", "clip": {"name": clip, "pretrained": weights},
                             "checkpoint": heads, "text_cache": None})
        model.set_vocabulary(vocabulary)  # 80 templates per class, no cache
        out["model_ready_s"] = time.perf_counter() - t
        out["classes"] = len(vocabulary)
        with FlopCounterMode(display=False) as counter:
            reference = photo_probabilities(model, photo, "fp32")
        _, _, objectness = segment_panels(model, photo, precision="fp32")
        out["gflop_per_image"] = counter.get_total_flops() / 1e9
        out["windows_per_image"] = 2
        runners = cpu_runners(model, paths, tmp)
        results, times = {}, {p: [] for p in paths}
        for path, (runner, precision, setup) in runners.items():
            t = time.perf_counter()
            probs = photo_probabilities(runner, photo, precision)
            first = time.perf_counter() - t
            results[path] = {"precision": precision, "setup_s": setup, "first_result_s": first,
                             "cold_start_s": out["model_ready_s"] + setup + first,
                             **fidelity(probs, reference, objectness)}
            print(json.dumps({path: results[path]}), flush=True)
        for _ in range(repeat):  # the paths in turn, so that a change of load spreads over all of them
            for path, (runner, precision, _) in runners.items():
                t = time.perf_counter()
                photo_probabilities(runner, photo, precision)
                times[path].append(time.perf_counter() - t)
        for path, r in results.items():
            sec = float(np.median(times[path]))
            peak = out["matmul_gflops_bf16" if r["precision"] == "bf16" else "matmul_gflops_fp32"]
            r.update(seconds_per_image=sec, seconds_per_window=sec / out["windows_per_image"],
                     gflops=out["gflop_per_image"] / sec, fraction_of_matmul_peak=out["gflop_per_image"] / sec / peak,
                     over_fp32_eager=sec / float(np.median(times["fp32"])) if "fp32" in times else None)
        out["paths"] = results
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["eval", "train", "target", "startup", "sweep", "cpu", "all"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=1449, help="synthetic VOC images (VOC 2012 val has 1449)")
    p.add_argument("--window-batch", type=int, default=SlideConfig.window_batch)
    p.add_argument("--iters", type=int, default=20, help="timed training iterations")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=512, help="target: MaskCLIP+'s crop (480 for Context)")
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--clip", default=CLIPConfig.name, help="open_clip model name or config JSON (eval; smoke runs)")
    p.add_argument("--json", help="write the results here (a new file, or --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per figure (1 for a smoke run)")
    p.add_argument("--miou-images", type=int, default=0, help="cpu: also evaluate fp32 and bf16 on N synthetic images")
    p.add_argument("--paths", default=",".join(CPU_PATHS), help=f"cpu: the paths to compare ({','.join(CPU_PATHS)})")
    args = p.parse_args(argv)
    return run(args)


def check_arguments(args: argparse.Namespace) -> torch.device:
    """Every argument checked before any work (one line each, as the other tools)."""
    for name, kind_ in (("images", COUNT), ("window_batch", COUNT), ("iters", COUNT), ("batch", COUNT), ("crop", COUNT),
                        ("workers", NON_NEGATIVE_INT), ("repeat", COUNT), ("miou_images", NON_NEGATIVE_INT)):
        kind_.check(getattr(args, name), f"--{name.replace('_', '-')}")
    if args.clip.endswith(".json") and not os.path.isfile(args.clip):
        raise FileNotFoundError(f"CLIP model config not found: {args.clip} (--clip)")
    unknown = [p for p in args.paths.split(",") if p not in CPU_PATHS]
    if unknown:
        raise ValueError(f"--paths: unknown path {unknown[0]} (choose from {', '.join(CPU_PATHS)})")
    if args.json:
        check_output_file(args.json, "--json", overwrite=args.overwrite, example="bench.json")
    return resolve_device(args.device)


@user_errors_as_one_line
def run(args: argparse.Namespace) -> int:
    device = check_arguments(args)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 figures are true fp32
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    if args.what in ("eval", "all"):
        results["eval"] = bench_eval(device, args.images, args.window_batch, args.workers, args.clip, args.repeat)
        print(json.dumps({"eval": results["eval"]}, indent=1), flush=True)
    if args.what in ("train", "all"):
        results["train"] = bench_train(device, args.iters, args.batch, args.workers, 64)
        print(json.dumps({"train": results["train"]}, indent=1), flush=True)
    if args.what in ("target", "all"):
        results["target"] = bench_target(device, args.iters, args.batch, args.crop)
        print(json.dumps({"target": results["target"]}, indent=1), flush=True)
    if args.what in ("sweep", "all"):
        results["sweep"] = bench_sweep(device, args.images, args.workers, args.clip)
        print(json.dumps({"sweep": results["sweep"]}, indent=1), flush=True)
    if args.what == "cpu":  # not in "all": a CPU figure, minutes per path
        results["cpu"] = bench_cpu(args.clip, args.repeat, args.paths.split(","))
        if args.miou_images:
            results["cpu"]["miou"] = bench_cpu_miou(args.clip, args.miou_images, args.workers)
        print(json.dumps({"cpu": results["cpu"]}, indent=1), flush=True)
    if args.what in ("startup", "all"):
        results["startup"] = bench_startup(args.clip, args.repeat)
        print(json.dumps({"startup": results["startup"]}, indent=1), flush=True)
    if args.json:
        write_atomic(args.json, lambda f: json.dump(results, f, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
