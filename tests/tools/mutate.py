"""Mutation testing of the numeric core: one-line mutants, each run against targeted tests in a copy.

    python tests/tools/mutate.py list                                   # every mutant: id, file:line, change
    python tests/tools/mutate.py run --copy /tmp/mut --suite old --out before.jsonl
    python tests/tools/mutate.py run --copy /tmp/mut --suite new --only-survivors before.jsonl --out after.jsonl
    python tests/tools/mutate.py report before.jsonl after.jsonl        # scores, and the survivors left
    python tests/tools/mutate.py planted --copy /tmp/p --make-copy       # issue #31's planted bugs, each caught?

The repository itself is never written: ``--copy`` names a copy of it (made with ``--make-copy``,
or by hand: no ``.git``, no ``.venv``) whose ``clip_dinoiser`` is the one imported (``PYTHONPATH``).
Mutants are AST-located and applied as text splices on one line: numbers changed (int + 1,
float x 2), comparisons flipped (< <=, > >=, == !=, is / is not, in / not in), True <-> False,
``not`` dropped, one operand of and / or dropped, + <-> -, * <-> /, min <-> max, amax <-> amin,
semantic strings swapped (replicate -> zeros, bilinear -> nearest, bicubic -> bilinear,
imagenet80 -> none; in tables and dataclass defaults any string gets a suffix), one keyword
argument dropped, one call statement or re-assignment deleted. Only the regions listed in
``TARGETS`` are mutated (the numeric core; not error messages, logging or I/O plumbing).

Each mutant runs in a child forked from a process that has imported torch, open_clip, timm, mmseg
and pytest (never ``clip_dinoiser``), so a mutant costs its tests, not the imports; bytecode
caching is off (a mutant of the same size and second as the original would reuse a stale .pyc).
Not part of the default test run: ``pytest`` collects nothing from ``tests/tools/``. Also runs as
``python -m tests.tools.mutate`` from the repository root.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# file -> top-level names (functions, classes, class.method, or module-level assignments) to mutate
TARGETS = {
    "clip_dinoiser/models/heads.py": ["DINOiserHeads", "load_heads"],
    "clip_dinoiser/models/pooling.py": ["threshold_correlations", "guided_pooling"],
    "clip_dinoiser/models/refinement.py": ["prompt_denoising", "key_smoothing", "background_refinement"],
    "clip_dinoiser/models/maskclip.py": ["Decoding.from_config", "refines_background", "MaskCLIP.decode",
                                        "MaskCLIP._decode", "MaskCLIP.features", "MaskCLIP.forward"],
    "clip_dinoiser/models/clip_dinoiser.py": ["CLIPDINOiser.features"],
    "clip_dinoiser/models/text.py": ["imagenet_templates", "TEMPLATE_SETS", "encode_text_to_eot", "encode_names",
                                     "combine_synonyms", "TextClassifier.forward", "Classes.bg_index"],
    "clip_dinoiser/models/backbone.py": ["OPENAI_MEAN", "OPENAI_STD", "interpolate_pos_embed",
                                         "plain_block", "self_attention", "residual_block",
                                         "CLIPBackbone.__init__", "CLIPBackbone._patchify",
                                         "CLIPBackbone.forward", "_patch_map", "_block_with_ln2", "IMAGENET_MEAN",
                                         "IMAGENET_STD", "input_stats", "prepare_input", "is_resnet_config",
                                         "MMSEG_LN_EPS", "as_mmseg_vit"],
    # MaskCLIP as its authors ran it, MaskCLIP+ (issue #28): suite "maskclip"
    "clip_dinoiser/models/resnet.py": ["is_resnet_tower", "CLIPResNetBackbone.__init__",
                                       "CLIPResNetBackbone.from_open_clip", "CLIPResNetBackbone.trunk",
                                       "CLIPResNetBackbone.forward"],
    "clip_dinoiser/models/target.py": ["ARCH_DILATIONS", "IMAGENET_MEAN", "IMAGENET_STD", "TargetSegmenter.__init__",
                                       "TargetSegmenter.set_classes", "TargetSegmenter.classify",
                                       "TargetSegmenter.embed", "TargetModel.decode", "build_target"],
    "clip_dinoiser/protocols.py": ["PROTOCOLS", "_MASKCLIP_CONTEXT", "MASKCLIP_UNSEEN", "_ZS_ANNOTATOR", "ZERO_SHOT",
                                   "PUBLISHED", "published_miou", "merge", "Protocol.node"],
    "clip_dinoiser/data/seg_train.py": ["TRAIN_SPLITS", "BENCHMARK_SPLITS", "UNSEEN", "IGNORE", "CAT_MAX_RATIO",
                                        "IMAGENET_MEAN", "label_files", "SeenLabels.read", "SegAugment", "augment_for",
                                        "mmseg_pipeline", "pad_with_mask", "TargetTrainImages.augment"],
    "clip_dinoiser/engine/training/target_train.py": ["split_and_vocabulary", "unseen_classes", "seen_labels",
                                                      "augmentation", "iterations", "check_run_inputs",
                                                      "poly_schedule", "pseudo_labels", "TargetTraining.make_optimizer",
                                                      "TargetTraining.labels", "TargetTraining.losses",
                                                      "segmentation_loss", "label_statistics", "build_task"],
    "clip_dinoiser/engine/evaluation/results.py": ["zero_shot_fields", "write_results", "summary_table"],
    "clip_dinoiser/engine/reporting/summary.py": ["ZERO_SHOT_METRICS", "robustness_table"],
    "clip_dinoiser/engine/evaluation/evaluate.py": ["confusion_index", "confusion_matrix", "stats_from_index",
                                                    "metrics_from_stats", "score_images", "Evaluator.setting",
                                                    "BenchmarkResult", "_nan_mean", "unseen_of"],
    "clip_dinoiser/engine/evaluation/inference.py": ["window_boxes", "SlidingWindows.put",
                                                     "SlidingWindows._post_process", "SlidingWindows._finish",
                                                     "_window_counts", "to_tensor", "image_probabilities",
                                                     "protocol_scores"],
    "clip_dinoiser/teachers/dino.py": ["DINOTeacher.correlations", "DINOTeacher.target", "DINOTeacher.loss"],
    "clip_dinoiser/teachers/found.py": ["REFERENCE_PAD", "FOUNDTeacher.probabilities", "FOUNDTeacher.target"],
    "clip_dinoiser/teachers/vit.py": ["IMAGENET_MEAN", "IMAGENET_STD", "dino_pos_embed", "FrozenViT.grid",
                                      "FrozenViT.tokens", "FrozenViT.last_qkv", "FrozenViT.features"],
    # the training-free peers (issue #33): suite "peers"
    "clip_dinoiser/models/last_block.py": ["layer_scale", "qkv", "neighbourhood", "AttentionBlock.__call__",
                                           "AttentionBlock.weights"],
    "clip_dinoiser/models/pamr.py": ["NEIGHBOURS", "_shifted", "pamr_affinities", "pamr"],
    "clip_dinoiser/models/proxyclip.py": ["proxy_attention", "ProxyAttention", "ProxyCLIP.padded",
                                          "ProxyCLIP.proxy_input", "ProxyCLIP.features", "ProxyCLIP.to_pixels"],
    "clip_dinoiser/engine/training/train.py": ["HEAD_LR", "make_optimizer", "Distiller.losses", "Distiller.step",
                                               "Distiller.dataset", "Distiller.targets"],
    "clip_dinoiser/engine/training/loop.py": ["_step"],
    "clip_dinoiser/data/benchmarks.py": ["BENCHMARKS", "LoadLabels.__call__", "eval_pipeline", "label_values",
                                         "REDUCE_ZERO_LABEL", "reduces_zero_label", "reference_for",
                                         "Benchmark.vocabulary_in"],
    "clip_dinoiser/data/train_images.py": ["TrainImages.__getitem__"],
    "clip_dinoiser/config.py": ["CLIPConfig", "MaskCLIPConfig", "TeacherConfig", "paper_teachers", "ModelConfig",
                                "SlideConfig", "TrainSettings", "TargetConfig", "TargetTrainSettings", "SLIDE_MODES",
                                "SCORES", "INPUTS"],
}

# The targeted tests of each file, as they were before tests/test_paper.py and test_first_principles.py
# ("old"), and the new files alone ("new"). No subprocess / CLI / torchrun tests: seconds per mutant.
_MODELS = ["tests/test_models.py"]
_EVAL = ["tests/test_eval.py", "-k", "confusion or area_stats or last_class or reduce_zero or bad_label "
         "or (each_benchmark and (voc or ade20k))"]
_TRAIN = ["tests/test_train.py", "-k", "not cli and not torchrun"]
OLD_TESTS = {
    "models": _MODELS, "text.py": ["tests/test_models.py", "tests/test_text.py", "-k", "not benchmark_tool"],
    "evaluate.py": _EVAL, "inference.py": ["tests/test_demo.py", "-k", "slide or window"],
    "teachers": _TRAIN, "train.py": _TRAIN, "loop.py": _TRAIN, "train_images.py": _TRAIN,
    "benchmarks.py": _EVAL, "config.py": [*_MODELS[:1], "tests/test_train.py", "-k", "not cli and not torchrun"],
}
NEW_TESTS = ["tests/test_paper.py", "tests/test_first_principles.py"]
# Suite "maskclip" (issue #28): the MaskCLIP / MaskCLIP+ tests, no subprocess, on the files of that work
_TOWERS = ["tests/test_maskclip_towers.py", "-k", "not eval_tool"]
_PLUS = ["tests/test_zero_shot.py", "tests/test_maskclip_paper.py", "tests/test_target.py",
         "tests/test_maskclip_plus.py", "-k", "not seen_unseen_and_hiou"]
# MaskCLIP's robustness protocol: the corruption in the evaluation pipeline (in-process)
_CORRUPT = ("tests/test_cluster.py::"
            "test_the_corruption_acts_on_the_loaded_image_before_the_resize_and_clean_is_unchanged")
# MaskCLIP's ViT value path on open_clip < 2.26's sequence-first layout (in-process)
_SEQ_FIRST = "tests/test_floors.py::test_open_clip_224_sequence_first_backbone_equals_batch_first"
MASKCLIP_TESTS = {
    "resnet.py": _TOWERS, "backbone.py": [*_TOWERS[:1], _SEQ_FIRST, *_TOWERS[1:]], "refinement.py": _TOWERS,
    "maskclip.py": _TOWERS,
    "text.py": ["tests/test_maskclip_towers.py", "tests/test_maskclip_paper.py", "-k", "not eval_tool"],
    "inference.py": _TOWERS, "evaluate.py": ["tests/test_maskclip_towers.py", "tests/test_zero_shot.py", "-k",
                                             "not eval_tool and not seen_unseen"],
    "protocols.py": ["tests/test_maskclip_paper.py", "tests/test_maskclip_towers.py", "-k", "not eval_tool"],
    "benchmarks.py": ["tests/test_maskclip_towers.py", "tests/test_maskclip_paper.py", "tests/test_zero_shot.py",
                      _CORRUPT, "-k", "not eval_tool and not seen_unseen"],
    "config.py": ["tests/test_maskclip_paper.py", "tests/test_maskclip_towers.py", "-k", "not eval_tool"],
    "target.py": _PLUS, "seg_train.py": _PLUS, "target_train.py": _PLUS,
    "results.py": ["tests/test_zero_shot.py", "-m", "not faults", "-k", "seen_unseen or results_files"],  # one is slow
    "summary.py": ["tests/test_maskclip_towers.py", "tests/test_zero_shot.py", "-k", "robustness or summary"],
}
# Suite "peers" (issue #33): SCLIP, NACLIP, ClearCLIP, ProxyCLIP and the pooling on them, no subprocess
_PEERS = ["tests/test_peers.py", "-k", "not eval_tool and not comparison and not load_gives"]
_PROXY = ["tests/test_proxyclip.py", "-k", "not bad and not offline and not resnet and not dinoiser_on"]
PEERS_TESTS = {"last_block.py": _PEERS, "pamr.py": ["tests/test_peers.py", "-k", "pamr or finish"],
               "proxyclip.py": _PROXY, "vit.py": _PROXY}
# The nine mutants of issue #21 that survived the tests before tests/test_paper.py and
# test_first_principles.py, written as (file, text on one line, its replacement): always run.
ISSUE_21 = [
    ("clip_dinoiser/models/heads.py", 'padding_mode="replicate"', 'padding_mode="zeros"'),
    ("clip_dinoiser/config.py", "kind(INTEGER, default=-3)", "kind(INTEGER, default=-2)"),
    ("clip_dinoiser/config.py", "default=(224, 224)", "default=(256, 256)"),
    ("clip_dinoiser/config.py", 'templates: str = "imagenet80"', 'templates: str = "none"'),
    ("clip_dinoiser/data/benchmarks.py", '"ImageSets/Segmentation/val.txt", 21, True,',
     '"ImageSets/Segmentation/val.txt", 21, False,'),
    ("clip_dinoiser/engine/training/train.py", '{"correlation": "corr_lr", "objectness": "found_lr"}',
     '{"correlation": "found_lr", "objectness": "corr_lr"}'),
    ("clip_dinoiser/engine/training/loop.py", "scheduler.step()", "pass"),
    ("clip_dinoiser/config.py", "low=16), default=448)", "low=16), default=224)"),
    ("clip_dinoiser/models/heads.py", "if missing or unexpected or shapes:", "if unexpected or shapes:"),
]
# Issue #31 (nothing silent, round three): one planted bug in the one mechanism of each class of
# fault, as (what, file, text on one line, its replacement, the test that must catch it):
# ``python tests/tools/mutate.py planted --copy /tmp/p --make-copy`` (docs/mutation.md lists them).
_SILENT = "tests/test_nothing_silent.py::test_"
ISSUE_31 = [
    ("1 full disk: the one writer re-raises the writer's own error (torch.save's RuntimeError)",
     "clip_dinoiser/files.py", "raise write_error(cause, path) from None", "raise",
     _SILENT + "a_failed_save_names_the_file_and_the_cause_and_leaves_the_old_file"),
    ("1 full disk: a failed append not cut back (half a record left)", "clip_dinoiser/files.py",
     "os.ftruncate(fd, end)", "pass", _SILENT + "a_failed_append_is_cut_back_to_the_last_whole_record"),
    ("1 full disk: the claim created (O_EXCL), then written (an empty .in_use on a full disk)",
     "clip_dinoiser/engine/job/runs.py", "with atomic_file(marker, binary=False, exclusive=True) as f:",
     'with open(marker, "x", encoding="utf-8") as f:',
     _SILENT + "a_claim_is_written_whole_or_not_at_all_and_a_stale_or_empty_one_is_taken_over"),
    ("1 full disk: an empty claim refused, not taken over", "clip_dinoiser/engine/job/runs.py", "        if not pid:",
     "        if False:",
     _SILENT + "a_claim_is_written_whole_or_not_at_all_and_a_stale_or_empty_one_is_taken_over"),
    ("2 shared machines: the one writer keeps mkstemp's 0600", "clip_dinoiser/files.py",
     "os.fchmod(fd, file_mode())", "pass", _SILENT + "files_get_the_mode_the_umask_gives"),
    ("3 inputs: inputs.json not compared on resume", "clip_dinoiser/engine/job/inputs.py",
     "change = now.differs(then)", 'change = ""',
     _SILENT + "a_resume_refuses_a_changed_input_and_never_says_resuming"),
    ("3 inputs: a file compared by its size only", "clip_dinoiser/engine/job/inputs.py",
     "if self.digest == old.digest and", "if self.size == old.size and",
     _SILENT + "a_resume_refuses_a_changed_input_and_never_says_resuming"),
    ("3 also seen: 'resuming' logged before the inputs are checked", "clip_dinoiser/engine/training/loop.py",
     "unrecorded = check_inputs(run_dir, inputs) if resuming else list(inputs)",
     'unrecorded = (resuming and log.info("resuming %s", run_dir)) or (check_inputs(run_dir, inputs) if resuming '
     "else list(inputs))", _SILENT + "a_resume_refuses_a_changed_input_and_never_says_resuming"),
    ("4 keys: data.corruption without its choice (eval.data.corruption=bogus refused after the training)",
     "clip_dinoiser/config.py", 'choice(CORRUPTIONS, what="corruption", default=None)', "None",
     _SILENT + "every_key_with_a_closed_set_of_values_is_checked_under_its_full_name"),
    ("4 keys: train.self_train_from beyond train.iterations accepted", "clip_dinoiser/engine/training/target_train.py",
     "tcfg.self_train_from > total:", "tcfg.self_train_from > 2 * total:",
     "tests/test_zero_shot.py::test_self_training_beyond_the_run_is_refused_before_any_model"),
    ("5 wrong tool: made_by tells no tool apart ('unknown key train.init')", "clip_dinoiser/engine/job/resume.py",
     "            return tool", "            return None",
     _SILENT + "a_run_resumed_by_the_wrong_tool_or_lacking_settings_is_one_line"),
    ("5 broken folder: missing settings of a sub-config not looked for ('missing mandatory value: data')",
     "clip_dinoiser/engine/job/resume.py",
     'missing += missing_settings(value, f.default_factory, f"{prefix}{f.name}.")',
     "pass", _SILENT + "a_run_resumed_by_the_wrong_tool_or_lacking_settings_is_one_line"),
    ("5 broken folder: the output's walk up through links (a dangling link: a bare [Errno 17])",
     "clip_dinoiser/files.py", "while not os.path.lexists(probe):", "while not os.path.exists(probe):",
     _SILENT + "an_output_that_is_a_dangling_link_or_a_link_loop_says_what_to_do"),
    ("5 hydra slips: hydra/launcher=slurm without the install line", "clip_dinoiser/engine/job/hints.py",
     'f"pip install -e \\".[{extra}]\\" (the cluster extra', 'f"(the cluster extra',
     _SILENT + "hydra_slips_that_need_quoting_or_an_extra_say_what_to_do"),
    ("6 signals: a second Ctrl-C waits for the iteration like the first", "clip_dinoiser/engine/job/signals.py",
     "if self.immediate or self.signum is not None:", "if self.immediate:",
     _SILENT + "a_second_signal_stops_the_iteration_under_way"),
    ("6 signals: a claim or a clean-up cut by the signal (not deferred)", "clip_dinoiser/engine/job/signals.py",
     "previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in SIGNALS}",
     "previous = {s: signal.getsignal(s) for s in SIGNALS}",
     _SILENT + "signals_wait_for_a_claim_or_a_clean_up_to_finish"),
    ("6 signals: a second Ctrl-C while the interpreter exits kills the process by the signal (exit -2, not 130)",
     "clip_dinoiser/engine/job/signals.py", "    atexit.register(ignore_signals)", "    pass",
     _SILENT + "a_signal_while_the_interpreter_exits_keeps_the_exit_code"),
    ("6 signals: an Interrupted replaced by the error of the code it landed in reported as that error (exit 2)",
     "clip_dinoiser/engine/job/signals.py", "todo += [e.__cause__, e.__context__]", "pass",
     _SILENT + "a_signal_replaced_by_the_error_of_the_code_it_landed_in_is_still_the_interruption"),
    ("7 summaries: the clean score averaged into the mean over severities",
     "clip_dinoiser/engine/reporting/summary.py", "_mean([row.get(c) for c in SEVERITY_COLUMNS])",
     '_mean([row.get(c) for c in (*SEVERITY_COLUMNS, "clean")])',
     _SILENT + "the_robustness_table_against_hand_computed_numbers"),
    ("7 summaries: a run averaged over only the benchmarks it has (summary.md)",
     "clip_dinoiser/engine/reporting/summary.py", "values = [row[b] for b in benchmarks]",
     "values = [row[b] for b in benchmarks if row[b] is not None]",
     _SILENT + "the_robustness_table_against_hand_computed_numbers"),
    ("7 summaries: a run scored over only the benchmarks it has a score of (robustness.md)",
     "clip_dinoiser/engine/reporting/summary.py", "    return _mean(scores)",
     "    return _mean([s for s in scores if s is not None])",
     _SILENT + "the_robustness_table_against_hand_computed_numbers"),
    ("7 summaries: runs grouped by model and corruption only (VOC and Context in one row)",
     "clip_dinoiser/engine/reporting/summary.py", 'ident["benchmark"] = "+".join(',
     'ident["benchmark"] = "all" or "+".join(',
     _SILENT + "the_robustness_table_against_hand_computed_numbers"),
    ("7 summaries: a sweep's unfinished jobs not listed", "clip_dinoiser/engine/reporting/summary.py",
     "return list(dict.fromkeys(out))", "return []", _SILENT + "a_sweep_with_missing_points_lists_them"),
    ("7 text cache: the templates left out of the key", "clip_dinoiser/models/text_cache.py",
     "json.dumps([self.identity, list(templates), name]", "json.dumps([self.identity, name]",
     _SILENT + "the_text_cache_key_holds_the_templates"),
    ("8 target: another CLIP only warned about (exit 0 with another classifier)", "clip_dinoiser/models/build.py",
     "        if not cfg.other_clip:", "        if False:",
     _SILENT + "a_target_is_scored_with_the_clip_its_checkpoint_records"),
    ("8 target: the printed evaluate command without data=", "clip_dinoiser/engine/training/target_train.py",
     "args.append(f\"data={settings['benchmark']}\")", "pass",
     _SILENT + "the_printed_evaluate_command_names_the_benchmark"),
    ("also seen: MaskCLIP+ without the check of every training image's header",
     "clip_dinoiser/engine/training/target_train.py", "    check_images(files)  #", "    pass  #",
     "tests/test_zero_shot.py::test_a_training_image_that_is_no_image_is_refused_before_any_model"),
]
SWAPS = {"replicate": "zeros", "bilinear": "nearest", "bicubic": "bilinear", "imagenet80": "none",
         "min": "max", "max": "min", "amax": "amin", "amin": "amax"}
COMPARE = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
           ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in"}
BINOP = {ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*"}


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    line: int
    change: str
    start: int  # character offsets into the line
    end: int
    text: str


def suite_tests(suite: str, path: str) -> list[str] | None:
    """The tests a mutant of ``path`` runs under ``suite`` (None: the suite does not cover the file)."""
    if suite == "new":
        return NEW_TESTS
    if suite == "maskclip":
        return MASKCLIP_TESTS.get(os.path.basename(path))
    if suite == "peers":
        return PEERS_TESTS.get(os.path.basename(path))
    return old_tests(path)


def old_tests(path: str) -> list[str]:
    name = os.path.basename(path)
    return OLD_TESTS.get(name) or OLD_TESTS["teachers" if "/teachers/" in path else "models"]


def regions(tree: ast.Module, wanted: list[str]) -> list[ast.AST]:
    """The nodes named in ``wanted`` (``f``, ``C``, ``C.m``, or a module-level assignment)."""
    found = []
    for node in tree.body:
        names = [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
        name = getattr(node, "name", None)
        if name in wanted or any(n in wanted for n in names):
            found.append(node)
        if isinstance(node, ast.ClassDef):
            found += [m for m in node.body if f"{node.name}.{getattr(m, 'name', '')}" in wanted]
    return found


def skipped(node: ast.AST, parents: dict) -> bool:
    """Docstrings, error messages, raise statements, logging calls and f-strings are not mutated."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Raise | ast.JoinedStr | ast.Assert):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "info", "warning", "debug", "error"):
            return True
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return True
    return False


def _edit(m: list, file: str, lines: list[str], node: ast.AST, start: int, end: int, text: str, kind: str) -> None:
    """Record a one-line mutant replacing columns ``start:end`` of ``node``'s line (1-based lineno)."""
    line = node.lineno
    old = lines[line - 1][start:end]
    if old == text:
        return
    m.append(Mutant(f"{file}:{line}:{start}:{kind}", file, line, f"{kind}: {old.strip()!r} -> {text.strip()!r}",
                    start, end, text))


def _between(lines: list[str], left: ast.AST, right: ast.AST) -> tuple[int, int] | None:
    """Columns of the text between two nodes on one line (where an operator is written)."""
    if left.end_lineno != right.lineno or left.lineno != right.lineno:
        return None
    return left.end_col_offset, right.col_offset


def _expression_mutants(m: list, file: str, lines: list[str], node: ast.AST, table: bool) -> None:
    one_line = getattr(node, "lineno", None) is not None and node.lineno == node.end_lineno
    if isinstance(node, ast.Constant) and one_line:
        v, s, e = node.value, node.col_offset, node.end_col_offset
        if isinstance(v, bool):
            _edit(m, file, lines, node, s, e, str(not v), "bool")
        elif isinstance(v, int):
            _edit(m, file, lines, node, s, e, str(v + 1), "number")
        elif isinstance(v, float):
            _edit(m, file, lines, node, s, e, repr(v * 2 if v else 0.5), "number")
        elif isinstance(v, str) and (v in SWAPS or (table and v)):
            new = SWAPS.get(v, v + "_")
            _edit(m, file, lines, node, s, e, lines[node.lineno - 1][s:e].replace(v, new), "string")
    elif isinstance(node, ast.Compare) and one_line:
        for left, op, right in zip([node.left, *node.comparators], node.ops, node.comparators):
            span = _between(lines, left, right)
            if span and type(op) in COMPARE:
                _edit(m, file, lines, node, *span, f" {COMPARE[type(op)]} ", "compare")
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP and one_line:
        span = _between(lines, node.left, node.right)
        if span and not (isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)):
            _edit(m, file, lines, node, *span, f" {BINOP[type(node.op)]} ", "arith")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub) and one_line:
        operand = lines[node.lineno - 1][node.operand.col_offset:node.operand.end_col_offset]
        _edit(m, file, lines, node, node.col_offset, node.end_col_offset, operand, "unary")
    elif isinstance(node, ast.Name) and node.id in SWAPS:
        _edit(m, file, lines, node, node.col_offset, node.end_col_offset, SWAPS[node.id], "swap")
    elif isinstance(node, ast.Attribute) and node.attr in SWAPS and one_line:
        _edit(m, file, lines, node, node.end_col_offset - len(node.attr), node.end_col_offset, SWAPS[node.attr],
              "swap")
    elif isinstance(node, ast.BoolOp) and one_line:
        v = node.values
        for i in range(len(v)):
            start, end = (v[i - 1].end_col_offset, v[i].end_col_offset) if i else (v[0].col_offset, v[1].col_offset)
            _edit(m, file, lines, node, start, end, "", "drop-operand")
    elif isinstance(node, ast.Call):
        _keyword_mutants(m, file, lines, node)


def _keyword_mutants(m: list, file: str, lines: list[str], call: ast.Call) -> None:
    """Drop one keyword argument (with its separating comma), where the call's pieces share a line."""
    items = [*call.args, *call.keywords]
    for i, kw in enumerate(call.keywords):
        if kw.arg is None or kw.lineno != kw.end_lineno:
            continue
        j = len(call.args) + i
        if j > 0 and items[j - 1].end_lineno == kw.lineno:
            _edit(m, file, lines, kw, items[j - 1].end_col_offset, kw.end_col_offset, "", f"drop-{kw.arg}")
        elif j + 1 < len(items) and items[j + 1].lineno == kw.lineno:
            _edit(m, file, lines, kw, kw.col_offset, items[j + 1].col_offset, "", f"drop-{kw.arg}")


def _statement_mutants(m: list, file: str, lines: list[str], fn: ast.AST) -> None:
    """Delete a call statement, or a re-assignment of a name already assigned in ``fn``."""
    assigned: set[str] = set(a.arg for a in getattr(getattr(fn, "args", None), "args", []))
    for node in ast.walk(fn):
        if not isinstance(node, ast.stmt) or node.lineno != node.end_lineno:
            continue
        text_at = lines[node.lineno - 1]
        targets = [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
        call = isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
        if call or isinstance(node, ast.AugAssign) or (isinstance(node, ast.Assign) and set(targets) & assigned):
            _edit(m, file, lines, node, node.col_offset, len(text_at.rstrip("\n")), "pass", "delete")
        assigned |= set(targets)


def mutants_of(file: str, root: str = ROOT) -> list[Mutant]:
    with open(os.path.join(root, file), encoding="utf-8") as f:
        source = f.read()
    lines, tree = source.splitlines(keepends=True), ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found: list[Mutant] = []
    for region in regions(tree, TARGETS[file]):
        table = not isinstance(region, ast.FunctionDef)  # module tables and dataclass defaults
        for node in ast.walk(region):
            if not skipped(node, parents):
                _expression_mutants(found, file, lines, node, table and isinstance(region, ast.Assign | ast.ClassDef))
        for fn in [n for n in ast.walk(region) if isinstance(n, ast.FunctionDef)]:
            _statement_mutants(found, file, lines, fn)
    unique = {mu.id: mu for mu in found if _compiles(source, lines, mu)}
    return sorted(unique.values(), key=lambda mu: (mu.line, mu.start, mu.id))


def apply(lines: list[str], mu: Mutant) -> str:
    out = list(lines)
    text = out[mu.line - 1]
    out[mu.line - 1] = text[: mu.start] + mu.text + text[mu.end:]
    return "".join(out)


def _compiles(source: str, lines: list[str], mu: Mutant) -> bool:
    try:
        ast.parse(apply(lines, mu))
    except SyntaxError:
        return False
    return True


def issue_mutants(root: str = ROOT) -> list[Mutant]:
    """``ISSUE_21`` as mutants (each on the first line holding its text)."""
    out = []
    for file, old, new in ISSUE_21:
        with open(os.path.join(root, file), encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        line = next(i for i, text in enumerate(lines, 1) if old in text)
        start = lines[line - 1].index(old)
        out.append(Mutant(f"{file}:{line}:{start}:issue21", file, line, f"issue21: {old!r} -> {new!r}", start,
                          start + len(old), new))
    return out


def all_mutants(files: list[str] | None = None, root: str = ROOT) -> list[Mutant]:
    """The mutants of ``files`` (all of ``TARGETS``), located in the sources under ``root``."""
    return [mu for f in TARGETS if not files or f in files for mu in mutants_of(f, root)]


def sample(mutants: list[Mutant], per_file: int | None, seed: int, root: str = ROOT) -> list[Mutant]:
    """``ISSUE_21``'s mutants and at most ``per_file`` mutants of each file, drawn with ``seed``
    (all of them with None)."""
    import random

    if per_file is None:
        return issue_mutants(root) + mutants
    rng, out = random.Random(seed), issue_mutants(root)
    for f in TARGETS:
        mine = [mu for mu in mutants if mu.file == f]
        out += sorted(rng.sample(mine, min(per_file, len(mine))), key=lambda mu: (mu.line, mu.start, mu.id))
    return out


def make_copy(dest: str) -> None:
    """A copy of the repository to mutate in (no .git, .venv, outputs or bytecode)."""
    if os.path.exists(dest):
        raise SystemExit(f"{dest} exists: remove it or pick another --copy")
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "__pycache__",
                                                               "mutants", "*.egg-info"))


def _preload() -> None:
    """Heavy third-party imports, done once in the parent (never clip_dinoiser: the children import
    the mutated copy)."""
    import cv2  # noqa: F401
    import hydra  # noqa: F401
    import mmcv  # noqa: F401
    import mmengine  # noqa: F401
    import mmseg.datasets  # noqa: F401
    import mmseg.evaluation  # noqa: F401
    import open_clip  # noqa: F401
    import pytest  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def _run_child(copy: str, tests: list[str], log: str) -> int:
    """pytest on ``tests`` in the copy, in this (forked) process; returns its exit code."""
    import pytest

    os.setsid()
    os.chdir(copy)
    sys.path.insert(0, copy)
    for name in [n for n in sys.modules if n == "tests" or n.startswith("tests.")]:
        del sys.modules[name]  # run as ``-m tests.tools.mutate``: the copy's tests, not this checkout's
    sys.dont_write_bytecode = True
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    return int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]))


def run_tests(copy: str, tests: list[str], timeout: float, log: str) -> tuple[str, float]:
    """(status, seconds): 'survived' (tests pass), 'killed', 'timeout' or 'error' (nothing collected)."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _run_child(copy, tests, log)
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() - start > timeout:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - start
        time.sleep(0.1)
    status = {0: "survived", 5: "error"}.get(code, "killed")
    return status, time.monotonic() - start


def run(args: argparse.Namespace) -> None:
    copy = os.path.abspath(args.copy)
    mutants = sample(all_mutants(None, copy), args.per_file, args.seed, copy)  # the same sample, whatever --files
    mutants = [mu for mu in mutants if not args.files or mu.file in args.files]
    if args.only_survivors:
        left = {r["id"] for r in _read(args.only_survivors) if r["status"] == "survived"}
        mutants = [mu for mu in mutants if mu.id in left]
    done = {r["id"] for r in _read(args.out)} if os.path.exists(args.out) else set()
    os.environ["PYTHONPATH"] = copy + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    _preload()
    originals: dict[str, str] = {}
    baselines: dict[tuple, str] = {}
    log = os.path.join(copy, "mutant.log")
    signal.signal(signal.SIGTERM, _stop)  # the copy's file is restored before leaving
    for i, mu in enumerate(mutants):
        if mu.id in done:
            continue
        tests = suite_tests(args.suite, mu.file)
        if tests is None:  # the suite has no tests for this file
            continue
        key = tuple(tests)
        if key not in baselines:  # the unmutated copy must pass these tests, or no mutant says anything
            baselines[key], seconds = run_tests(copy, tests, args.timeout * 3, log)
            print(f"baseline {' '.join(tests)}: {baselines[key]} in {seconds:.0f} s", flush=True)
            if baselines[key] != "survived":
                raise SystemExit(f"the unmutated copy fails {tests}: see {log}")
        path = os.path.join(copy, mu.file)
        originals.setdefault(mu.file, open(path, encoding="utf-8").read())
        with open(path, "w", encoding="utf-8") as f:
            f.write(apply(originals[mu.file].splitlines(keepends=True), mu))
        try:
            status, seconds = run_tests(copy, tests, args.timeout, log)
        finally:
            with open(path, "w", encoding="utf-8") as f:
                f.write(originals[mu.file])
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({**asdict(mu), "status": status, "seconds": round(seconds, 1), "suite": args.suite})
                    + "\n")
        print(f"[{i + 1}/{len(mutants)}] {status:8s} {seconds:5.1f}s {mu.file}:{mu.line} {mu.change}", flush=True)


def planted(copy: str, timeout: float) -> int:
    """Each bug of ``ISSUE_31`` planted in the copy in turn, its test run (which must pass on the
    unplanted copy first); prints "planted: ... -> caught by <test>" or "SURVIVED"; returns how
    many survived."""
    os.environ["PYTHONPATH"] = copy + os.pathsep + os.environ.get("PYTHONPATH", "")
    _preload()
    log = os.path.join(copy, "mutant.log")
    signal.signal(signal.SIGTERM, _stop)
    status, _ = run_tests(copy, sorted({p[4] for p in ISSUE_31}), timeout * 5, log)
    if status != "survived":
        raise SystemExit(f"the unplanted copy fails the tests of ISSUE_31: see {log}")
    survived = 0
    for what, file, old, new, test in ISSUE_31:
        path = os.path.join(copy, file)
        original = open(path, encoding="utf-8").read()
        if original.count(old) != 1:
            raise SystemExit(f"{file}: {old!r} is not there once (found {original.count(old)} times)")
        with open(path, "w", encoding="utf-8") as f:
            f.write(original.replace(old, new))
        try:
            status, _ = run_tests(copy, [test], timeout, log)
        finally:
            with open(path, "w", encoding="utf-8") as f:
                f.write(original)
        caught = status in ("killed", "timeout")
        survived += not caught
        print(f"planted: {what} -> {'caught by' if caught else 'SURVIVED'} {test}", flush=True)
    return survived


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def report(before: str, afters: list[str]) -> str:
    """Scores (killed / all; timeouts count as killed) and the mutants that survive every suite
    (``before``: all mutants; ``afters``: later runs, e.g. on the survivors, with more tests)."""
    first = _read(before)
    dead = {"killed", "timeout"}
    killed_later = {r["id"] for after in afters for r in _read(after) if r["status"] in dead}
    killed_before = [r for r in first if r["status"] in dead]
    survivors = [r for r in first if r["status"] not in dead and r["id"] not in killed_later]
    n = len(first)
    lines = [f"mutants: {n} in {len({r['file'] for r in first})} files",
             f"before: {len(killed_before)} killed, {n - len(killed_before)} survived "
             f"({100 * len(killed_before) / max(n, 1):.1f} %)",
             f"after:  {n - len(survivors)} killed, {len(survivors)} survived "
             f"({100 * (n - len(survivors)) / max(n, 1):.1f} %)", "", "survivors:"]
    for r in survivors:
        lines.append(f"  {r['file']}:{r['line']}  {r['change']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print every mutant")
    r = sub.add_parser("run", help="run mutants against the tests, in a copy")
    rep = sub.add_parser("report", help="scores and survivors from run results")
    pl = sub.add_parser("planted", help="issue #31's planted bugs (ISSUE_31), each against its test, in a copy")
    pl.add_argument("--copy", required=True, help="the copy of the repository to plant in")
    pl.add_argument("--make-copy", action="store_true", help="make --copy first")
    pl.add_argument("--timeout", type=float, default=180.0, help="seconds per planted bug")
    for q in (ls, r):
        q.add_argument("--files", nargs="*", help="only these files (paths as in TARGETS)")
        q.add_argument("--per-file", type=int, default=None, help="at most N mutants per file (seeded sample)")
        q.add_argument("--seed", type=int, default=0)
    r.add_argument("--copy", required=True, help="the copy of the repository to mutate in")
    r.add_argument("--make-copy", action="store_true", help="make --copy first")
    r.add_argument("--suite", choices=("old", "new", "maskclip", "peers"), default="old",
                   help="old: the targeted tests per file; new: tests/test_paper.py and "
                   "tests/test_first_principles.py; maskclip: the MaskCLIP / MaskCLIP+ tests on the files of issue "
                   "#28 (MASKCLIP_TESTS)")
    r.add_argument("--only-survivors", help="results file: run only the mutants that survived there")
    r.add_argument("--out", required=True, help="results, one JSON line per mutant (appended; a rerun resumes)")
    r.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant")
    r.add_argument("--threads", type=int, default=2)
    rep.add_argument("before")
    rep.add_argument("after", nargs="*")
    args = p.parse_args(argv)
    if args.command == "list":
        for mu in sample(all_mutants(), args.per_file, args.seed):
            if not args.files or mu.file in args.files:
                print(f"{mu.file}:{mu.line}\t{mu.change}")
    elif args.command == "run":
        if args.make_copy:
            make_copy(args.copy)
        run(args)
    elif args.command == "planted":
        if args.make_copy:
            make_copy(args.copy)
        raise SystemExit(1 if planted(os.path.abspath(args.copy), args.timeout) else 0)
    else:
        print(report(args.before, args.after))


if __name__ == "__main__":
    main()
