"""mmseg datasets the paper defines differently from mmsegmentation: VOC20 and COCO-Object."""

from __future__ import annotations

import contextlib
import io
from importlib import resources

# mmseg prints "Could not import OneDL" on stdout when its optional OneDL loaders are absent.
with contextlib.redirect_stdout(io.StringIO()):
    from mmseg.datasets import BaseSegDataset

_VOC20 = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
          "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _names(benchmark: str) -> tuple[str, ...]:
    text = (resources.files("clip_dinoiser.data") / "vocab" / f"{benchmark}.txt").read_text()
    return tuple(line.split(",")[0].strip() for line in text.splitlines() if line.strip())


def _voc_colours(first: int, n: int) -> list[list[int]]:
    """VOC's own colours of labels ``first`` .. ``first + n - 1`` (``visualize.voc_colormap``)."""
    from ..visualize import voc_colormap

    return voc_colormap()[first : first + n].tolist()


def _distinct_colours(names: tuple[str, ...]) -> list[list[int]]:
    from ..visualize import palette_for

    return palette_for(names).tolist()


class PascalVOC20Dataset(BaseSegDataset):
    """PASCAL VOC 2012 without the background class: label 0 and the 255 borders are ignored
    (``reduce_zero_label``), 20 object classes are scored (in VOC's own colours)."""

    METAINFO = dict(classes=_VOC20, palette=_voc_colours(1, 20))

    def __init__(self, ann_file: str, img_suffix: str = ".jpg", seg_map_suffix: str = ".png", **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, ann_file=ann_file,
                         reduce_zero_label=True, **kwargs)


class COCOObjectDataset(BaseSegDataset):
    """COCO-Object: the 80 COCO thing classes of COCO-Stuff 164k plus background (label 0);
    annotations ``*_instanceTrainIds.png`` made by ``tools/convert_coco_object.py``. Colours:
    ``visualize.palette_for`` (background black; mmseg's COCO-Stuff palette repeats colours)."""

    METAINFO = dict(classes=_names("coco_object"), palette=_distinct_colours(_names("coco_object")))

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = "_instanceTrainIds.png", **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=False, **kwargs)
