"""A segmenter for a fixed vocabulary as one ONNX file, run by ONNX Runtime without this package.

The graph maps B x 3 x h x w windows (RGB in [0, 1], h x w the protocol's window, 448 x 448 by
default) to B x K x h x w class probabilities: the model's patch-grid probabilities (backbone,
heads, pooling, classifier with the vocabulary's text embeddings baked in, background
refinement) resized bilinearly to the window, as ``SlidingWindows`` does before it averages the
windows. The class names are in the file's metadata (``classes``, a JSON list).

``pip install onnx onnxscript`` to export, ``pip install onnxruntime`` to run (the ``export``
extra). On the 2-core AVX2 development machine ONNX Runtime ran a window 1.1-1.5x faster than
PyTorch's eager fp32 (BENCHMARKS.md, ``tools/benchmark.py cpu``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError

INPUT, OUTPUT = "windows", "probabilities"


class WindowSegmenter(nn.Module):
    """What the exported graph computes: B x 3 x h x w windows -> B x K x h x w probabilities (fp32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, windows: Tensor) -> Tensor:
        probs = self.model(windows).float()
        return F.interpolate(probs, size=windows.shape[-2:], mode="bilinear", align_corners=False)


def export_onnx(model: nn.Module, path: str, *, window: Sequence[int] = (448, 448), max_batch: int = 64) -> None:
    """Write ``model`` (on the CPU, its vocabulary set) for its current vocabulary to ``path``: one
    ONNX file, the weights inside, batches of 1 to ``max_batch`` windows of ``window`` pixels."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise UserError("exporting to ONNX needs onnx and onnxscript: pip install onnx onnxscript") from None
    names = list(model.class_names)
    graph = WindowSegmenter(model).eval()
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    with torch.no_grad():
        program = torch.onnx.export(graph, (torch.rand(2, 3, *window),), None, dynamo=True, input_names=[INPUT],
                                    output_names=[OUTPUT], dynamic_shapes={"windows": {0: batch}},
                                    external_data=False, verbose=False)
    program.model.metadata_props["classes"] = json.dumps(names)
    program.model.metadata_props["window"] = json.dumps(list(window))
    program.save(path, external_data=False)


def onnx_session(path: str, threads: int | None = None):
    """An ONNX Runtime CPU session of an exported file (``threads``: intra-op threads; None: PyTorch's)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("running an exported segmenter needs onnxruntime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class SessionWindows(nn.Module):
    """An ONNX Runtime session seen as a window model (``SlidingWindows``): B x 3 x h x w -> B x K x h x w."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session

    def forward(self, windows: Tensor) -> Tensor:
        out = self.session.run([OUTPUT], {INPUT: windows.float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(out)
