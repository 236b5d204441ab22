"""Split ImageNet-R: the 200 ImageNet-R classes in 10 tasks of 20, from its image folder."""

from __future__ import annotations

from typing import Any

from clfw.benchmarks.image_folder import ImageFolderStream


class SplitImageNetR(ImageFolderStream):
    """Split ImageNet-R (Hendrycks et al. 2021's renditions; the prompt papers' benchmark): 200 classes in 10 tasks.

    ``root`` is the extracted ``imagenet-r`` folder (one subfolder per WordNet id; download ``imagenet-r.tar`` from
    the ImageNet-R page). The official split files of L2P/DualPrompt/CODA-Prompt cannot be fetched here; as
    DualPrompt's PyTorch code does, the 30,000 images are split at random 80/20 over the whole data set (24,000 train,
    6,000 test) with a generator seeded by ``split_seed`` (42), and tasks take 20 classes each in sorted WordNet-id
    order. Numbers are therefore comparable across clfw runs but not exactly with the papers' split.

    Args:
        **kwargs: Arguments of :class:`~clfw.benchmarks.image_folder.ImageFolderStream` (root, image_size, n_tasks ...).
    """

    def __init__(self, root: str = "data/imagenet-r", n_tasks: int | None = 10, **kwargs: Any) -> None:
        super().__init__(root=root, n_tasks=n_tasks, **kwargs)
