"""Models: CLIP backbone, MaskCLIP, CLIP-DINOiser heads and pooling."""

from .backbone import BackboneOutput, CLIPBackbone, interpolate_pos_embed, load_open_clip
from .build import MODEL_BUILDERS, build_clip, build_model, check_model_config, check_model_files
from .clip_dinoiser import CLIPDINOiser
from .heads import DINOiserHeads, load_heads, load_heads_state, save_heads
from .maskclip import MaskCLIP
from .pooling import guided_pooling
from .text import TextClassifier, parse_vocabulary, read_vocabulary_file

__all__ = [
    "BackboneOutput", "CLIPBackbone", "CLIPDINOiser", "DINOiserHeads", "MaskCLIP", "MODEL_BUILDERS",
    "TextClassifier", "build_clip", "build_model", "check_model_config", "check_model_files", "guided_pooling",
    "interpolate_pos_embed", "load_heads", "load_heads_state", "load_open_clip", "parse_vocabulary",
    "read_vocabulary_file", "save_heads",
]
