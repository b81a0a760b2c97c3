"""The two light CLIP-DINOiser heads and the released ``last.pt`` checkpoint format."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..files import save_atomic
from ..ops import full_precision
from ..readers import read_weights, state_mismatch


class DINOiserHeads(nn.Module):
    """Correlation head ``obj_proj`` and objectness head ``bkg_decoder`` (paper Sec. 3.2).

    Both read CLIP's intermediate features (``ln_2`` output of block ``feats_idx``).
    Parameter names match the authors' released checkpoint.

    Args:
        in_dim: channels of the CLIP intermediate features (768 for ViT-B/16).
        proj_dim: channels of the correlation embedding.
        kernel_size: spatial size of the ``obj_proj`` convolution (replicate padding).
    """

    def __init__(self, *, in_dim: int, proj_dim: int, kernel_size: int) -> None:
        super().__init__()
        self.obj_proj = nn.Conv2d(
            in_dim, proj_dim, kernel_size, padding=kernel_size // 2, padding_mode="replicate"
        )
        self.bkg_decoder = nn.Conv2d(in_dim, 1, 1)

    def parts(self) -> dict[str, nn.Module]:
        """Each head (``config.HEADS``) and the module a teacher trains for it."""
        return {"correlation": self.obj_proj, "objectness": self.bkg_decoder}

    def correlations(self, inter: Tensor) -> Tensor:
        """Cosine correlations of the projected patches: B x W x h x w -> B x N x N (fp32: the
        pooling thresholds them at gamma; the convolution runs in the autocast dtype)."""
        proj = self.obj_proj(inter).flatten(2)
        with full_precision(proj):
            proj = F.normalize(proj.float(), dim=1)  # B x P x N
            return proj.transpose(1, 2) @ proj

    def objectness_logits(self, inter: Tensor) -> Tensor:
        """Foreground logits from per-patch L2-normalised features: B x 1 x h x w."""
        return self.bkg_decoder(F.normalize(inter, dim=1))

    def forward(self, inter: Tensor) -> tuple[Tensor, Tensor]:
        """(correlation logits B x N x N, objectness logits B x 1 x h x w), in ``HEADS`` order."""
        return self.correlations(inter), self.objectness_logits(inter)


def load_heads_state(path: str) -> dict[str, Tensor]:
    """Read a heads file in the released format ``{"model_state_dict": {...}}`` (or a bare state dict).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a checkpoint of that format.
    """
    ckpt = read_weights(path, "heads checkpoint")
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path} is not a heads checkpoint ({{'model_state_dict': {{name: tensor}}}})")
    return state


def load_heads(heads: nn.Module, path: str) -> None:
    """Load ``path`` into ``heads`` strictly, with a one-line error naming what does not fit."""
    state = load_heads_state(path)
    expected = heads.state_dict()
    missing, unexpected, wrong = state_mismatch(expected, state)
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong]
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing}" if missing else "", f"unexpected keys {unexpected}" if unexpected else "",
                 f"shape mismatch {shapes}" if shapes else ""]
        raise UserError(f"heads checkpoint {path} does not fit the model: " + "; ".join(p for p in parts if p))
    heads.load_state_dict(state)


def save_heads(heads: nn.Module, path: str, **extra) -> None:
    """Write ``heads`` in the released format (tensors on the CPU), atomically."""
    state = {k: v.detach().cpu().clone() for k, v in heads.state_dict().items()}
    save_atomic({"model_state_dict": state, **extra}, path)
