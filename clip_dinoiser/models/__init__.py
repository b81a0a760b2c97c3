"""Models: image towers, MaskCLIP, CLIP-DINOiser heads and pooling, built from a ModelConfig."""

from .backbone import Backbone, BackboneOutput, CLIPBackbone, interpolate_pos_embed, load_open_clip
from .build import (
                    BACKBONES,
                    MODEL_BUILDERS,
                    POOLINGS,
                    build_clip,
                    build_model,
                    check_model_config,
                    check_model_files,
                    model_config,
)
from .clip_dinoiser import CLIPDINOiser
from .heads import DINOiserHeads, load_heads, load_heads_state, save_heads
from .maskclip import Decoding, Features, MaskCLIP
from .pooling import guided_pooling
from .resnet import CLIPResNetBackbone
from .text import Classes, TextClassifier, parse_vocabulary, read_vocabulary_file

__all__ = [
    "BACKBONES", "Backbone", "BackboneOutput", "CLIPBackbone", "CLIPResNetBackbone",
    "CLIPDINOiser", "Classes", "DINOiserHeads", "Decoding",
    "Features", "MODEL_BUILDERS", "MaskCLIP", "POOLINGS", "TextClassifier", "build_clip", "build_model",
    "check_model_config", "check_model_files", "guided_pooling", "interpolate_pos_embed", "load_heads",
    "load_heads_state", "load_open_clip", "model_config", "parse_vocabulary", "read_vocabulary_file", "save_heads",
]
