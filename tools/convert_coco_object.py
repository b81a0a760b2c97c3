"""COCO-Stuff 164k raw labels -> COCO-Object ``*_instanceTrainIds.png`` (0 background, 1..80 things).

    python tools/convert_coco_object.py data/coco_stuff164k [--nproc 8]

Expects mmseg's layout: ``images/{train2017,val2017}`` and the stuffthingmaps PNGs in
``annotations/{train2017,val2017}``; writes the converted files next to them. The COCO thing classes (train ids 0..79)
become 1..80; stuff classes and unlabeled pixels become 0 (background), as in GroupViT, TCL and the
CLIP-DINOiser reference, whose COCO-Object numbers come from this conversion.
"""

import sys
from functools import partial

from clip_dinoiser.data.convert import COCO_OBJECT_LUT, coco_label_pairs, converter_main

if __name__ == "__main__":
    pairs = partial(coco_label_pairs, suffix="_instanceTrainIds.png")
    sys.exit(converter_main(__doc__.splitlines()[0], pairs, COCO_OBJECT_LUT))
