"""Cityscapes ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` (19 train ids, 255 ignored).

    python tools/convert_cityscapes.py data/cityscapes [--nproc 8]
"""

import sys

from clip_dinoiser.data.convert import CITYSCAPES_LUT, cityscapes_label_pairs, converter_main

if __name__ == "__main__":
    sys.exit(converter_main(__doc__.splitlines()[0], cityscapes_label_pairs, CITYSCAPES_LUT))
