"""COCO-Stuff 164k raw labels -> ``*_labelTrainIds.png`` (train ids 0..170, 255 ignored).

    python tools/convert_coco_stuff.py data/coco_stuff164k [--nproc 8]

Expects mmseg's layout: ``images/{train2017,val2017}`` and the stuffthingmaps PNGs in
``annotations/{train2017,val2017}``; writes the converted files next to them.
"""

import sys
from functools import partial

from clip_dinoiser.data.convert import COCO_STUFF_LUT, coco_label_pairs, converter_main

if __name__ == "__main__":
    pairs = partial(coco_label_pairs, suffix="_labelTrainIds.png")
    sys.exit(converter_main(__doc__.splitlines()[0], pairs, COCO_STUFF_LUT))
