"""Write a segmenter for a fixed vocabulary as one ONNX file that ONNX Runtime runs without this package.

    python tools/export.py --prompts cat sofa "potted plant" background --output segmenter.onnx
    python tools/export.py --prompts-file classes.txt --weights checkpoints/last.pt \\
        --clip-pretrained clip.safetensors --output segmenter.onnx

The file maps B x 3 x 448 x 448 windows (RGB in [0, 1]) to B x K x 448 x 448 class probabilities;
its metadata holds the class names (``classes``). README.md ("Without PyTorch: ONNX Runtime")
shows the lines that segment a photo with it. Needs ``pip install -e ".[export]"`` (onnx,
onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from clip_dinoiser.engine.job.cli import user_errors_as_one_line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="clip_dinoiser", help="clip_dinoiser, maskclip or dino_maskclip")
    p.add_argument("--weights", default="released", help="CLIP-DINOiser's heads: released or a heads file")
    p.add_argument("--clip-name", default=None, help="open_clip architecture (default: ViT-B-16)")
    p.add_argument("--clip-pretrained", default=None, help="open_clip tag or local CLIP file (default: the paper's)")
    p.add_argument("--prompts", nargs="+", help="class names ('a,b' in one name: synonyms)")
    p.add_argument("--prompts-file", help="or a UTF-8 text file, one class per line")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--window", type=int, default=448, help="window side in pixels (the protocol's: 448)")
    return run(p.parse_args(argv))


@user_errors_as_one_line
def run(args: argparse.Namespace) -> int:
    from clip_dinoiser import load
    from clip_dinoiser.engine.evaluation.export import export_onnx
    from clip_dinoiser.errors import UserError
    from clip_dinoiser.files import atomic_file, check_output_file
    from clip_dinoiser.models import read_vocabulary_file
    from clip_dinoiser.values import COUNT

    if bool(args.prompts) == bool(args.prompts_file):
        raise UserError("give the classes as --prompts NAME ... or --prompts-file FILE (one of them)")
    COUNT.check(args.window, "--window")
    check_output_file(args.output, "--output", overwrite=args.overwrite, example="seg.onnx")
    classes = read_vocabulary_file(args.prompts_file, "--prompts-file") if args.prompts_file else args.prompts
    clip = {k: v for k, v in (("name", args.clip_name), ("pretrained", args.clip_pretrained)) if v is not None}
    segmenter = load(args.model, args.weights, "cpu", precision="fp32", **({"clip": clip} if clip else {}))
    segmenter.model.set_vocabulary(classes)
    with tempfile.TemporaryDirectory() as scratch:  # the exporter writes a path; the one writer places it
        graph = os.path.join(scratch, "segmenter.onnx")
        export_onnx(segmenter.model, graph, window=(args.window, args.window))
        with open(graph, "rb") as src, atomic_file(args.output) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    print(f"{args.output}: {len(segmenter.model.class_names)} classes, windows of {args.window} x {args.window}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
