"""Training images: any folder tree of images, the paper's augmentations, resumable sampling.

Every random choice (which images, their order, crops, flips, brightness) derives from
(seed, epoch, position), so a run resumed at any iteration sees exactly the batches an
uninterrupted run sees, whatever the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from ..config import TrainSettings
from ..readers import IMAGE_EXTENSIONS, image_size, read_image

__all__ = ["IMAGE_EXTENSIONS", "ResumableBatchSampler", "TrainImages", "check_images", "list_images", "sample_subset",
           "seeded_order", "unreadable_image", "walk_files"]


def walk_files(root: str, keep: Callable[[str], bool]) -> list[str]:
    """The files under ``root`` whose names ``keep`` accepts (any nesting, links followed), sorted.
    A folder reached twice (a link loop, or two links to one folder) is walked once."""
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        files += [os.path.join(folder, f) for f in names if keep(f)]
    return sorted(files)


def list_images(root: str) -> list[str]:
    """All image files under ``root`` (``walk_files``; ImageNet's train folder works), sorted."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"training image folder not found: {root}")
    files = walk_files(root, lambda name: name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return files


def unreadable_image(path: str) -> str | None:
    """Why ``path`` is not a readable image (its header checked: cheap), or None."""
    try:
        image_size(path)
    except (OSError, ValueError) as e:  # every failure of the image reader, named
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def check_images(files: list[str]) -> None:
    """A one-line ``UserError`` naming the first of ``files`` that is not a readable image (headers
    only: cheap), before a model is built or an iteration runs."""
    from tqdm import tqdm

    from ..errors import UserError

    for path in tqdm(files, desc="checking images", unit="img", leave=False, disable=len(files) < 1000):
        reason = unreadable_image(path)
        if reason is not None:
            named = reason if path in reason else f"cannot read training image {path}: {reason}"
            raise UserError(f"{named} (a training image: remove it, or replace it)")


def sample_subset(files: list[str], size: int | None, seed: int) -> list[str]:
    """``size`` distinct files drawn with ``seed`` (all files, in order, when ``size`` is None or larger)."""
    if size is None or size >= len(files):
        return list(files)
    return seeded_order(files, seed)[:size]


def seeded_order(files: list[str], seed: int) -> list[str]:
    """All ``files`` in the seeded random order whose first ``size`` are ``sample_subset``'s draw."""
    g = torch.Generator().manual_seed(seed)
    return [files[i] for i in torch.randperm(len(files), generator=g).tolist()]


class TrainImages(Dataset):
    """The paper's augmentations: resize short side to ``size``, random ``size`` crop,
    horizontal flip, ColorJitter(brightness=0.5). Items are asked for as (index, seed).

    The resize acts on the float tensor, as the reference's transforms (``ToTensor`` first) did
    under torchvision 0.13.1: bilinear without antialiasing unless ``antialias``.
    """

    def __init__(self, files: list[str], size: int = TrainSettings.im_size, *,
                 antialias: bool = TrainSettings.antialias) -> None:
        self.files = files
        self.size = size
        self.antialias = antialias

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> Tensor:
        index, seed = item
        g = torch.Generator().manual_seed(seed)
        # as torchvision's ImageFolder loader (PIL, convert('RGB'), no EXIF rotation), then ToTensor
        rgb = read_image(self.files[index], "training image", orient=False)
        img = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        img = TF.resize(img, self.size, antialias=self.antialias)
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.size + 1, (1,), generator=g))
        img = img[:, top : top + self.size, left : left + self.size]
        if torch.rand(1, generator=g).item() < 0.5:
            img = img.flip(-1)
        factor = float(torch.empty(1).uniform_(0.5, 1.5, generator=g))
        return TF.adjust_brightness(img, factor)


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for iterations ``start .. total-1``: each epoch a seeded permutation of the
    dataset cut into batches (the last one smaller), each rank taking its share of a batch.

    Args:
        n: dataset size.
        batch_size: global batch size.
        epochs: passes over the data.
        seed: run seed.
        start: first iteration to produce (resume).
        rank, world: this process's share of every batch.
        iterations: the run's length in iterations (MaskCLIP+'s schedules), instead of ``epochs``
            (which then only needs to cover them).
    """

    def __init__(self, n: int, batch_size: int, epochs: int, seed: int, *, start: int = 0, rank: int = 0,
                 world: int = 1, iterations: int | None = None) -> None:
        self.n, self.batch_size, self.epochs, self.seed = n, batch_size, epochs, seed
        self.start, self.rank, self.world, self.iterations = start, rank, world, iterations

    @property
    def iters_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    @property
    def total(self) -> int:
        return self.iters_per_epoch * self.epochs if self.iterations is None else self.iterations

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        epoch, pos = divmod(iteration, self.iters_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        lo = pos * self.batch_size
        items = [(idx, (self.seed * 1_000_003 + epoch) * 100_003 + lo + j)
                 for j, idx in enumerate(order[lo : lo + self.batch_size])]
        return items[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.total):
            yield self.batch(it)
