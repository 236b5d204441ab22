"""Inputs larger than memory: files decoded on access, and the compact copies replay memories may opt into.

:class:`FileInputs` stands where a stream would otherwise hold an input tensor (``TaskData.x``). It holds only the file
paths; indexing it decodes, so every consumer that reads ``data.x[idx]`` (the loaders, replay insertion, iCaRL's
herding, A-GEM's episodes) gets exactly the ``uint8`` tensor the in-memory path would hold at ``idx``. Building a
stream (splits, tasks, validation parts, concatenation) must select samples without decoding them: use
:func:`clfw.data.take` and :meth:`clfw.data.TaskData.cat`, which keep a :class:`FileInputs` lazy and index tensors as
before.

A stream switches between the paths by what it puts in ``TaskData.x``: a tensor (decoded once, at setup) or a
:class:`FileInputs` over the same files and the same decoder (decoded by the loader's worker processes, every epoch).
With the same decoder both give the same bytes, so the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

Decoder = Callable[[str], Tensor]


class FileInputs:
    """Samples stored as files, decoded on access: the lazy counterpart of an input tensor ``[N, *item_shape]``.

    ``x[i]`` decodes one sample; ``x[positions]`` (a list, a slice, an ``int64`` or boolean tensor) decodes and stacks
    them, like indexing a tensor. :meth:`take` selects samples without decoding (a view over the same decoder). The
    paths are held in one NumPy byte array, not a list of Python strings, so forked loader workers share its pages
    instead of copying them as reference counts change.

    Args:
        files: Path of each sample, in sample order.
        decode: ``path -> Tensor`` of shape ``item_shape`` and dtype ``dtype`` (e.g. an image decoder at a fixed
            size); a module-level function or a ``functools.partial`` of one, so that worker processes can receive it.
        item_shape: Shape of one decoded sample.
        dtype: Its dtype (``uint8`` for images).
    """

    def __init__(
        self,
        files: Sequence[str] | np.ndarray,
        decode: Decoder,
        item_shape: Sequence[int],
        dtype: torch.dtype = torch.uint8,
    ) -> None:
        if isinstance(files, np.ndarray):
            self.files = files
        else:
            encoded = [os.fsencode(f) for f in files]
            self.files = np.array(encoded, dtype=np.bytes_) if encoded else np.empty(0, dtype="S1")
        self.decode, self.item_shape, self.dtype = decode, tuple(int(s) for s in item_shape), dtype

    # ---------------------------------------------------------------------------------------------- tensor-like
    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.item_shape))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"FileInputs({len(self)} files, item_shape={self.item_shape}, dtype={self.dtype})"

    def path(self, i: int) -> str:
        """The file of sample ``i``."""
        return os.fsdecode(bytes(self.files[i]))

    def load(self, i: int) -> Tensor:
        """Decodes sample ``i``, checking its shape and dtype."""
        path = self.path(i)
        try:
            out = self.decode(path)
        except OSError as err:
            raise OSError(f"cannot decode {path}: {err}") from err
        if tuple(out.shape) != self.item_shape or out.dtype != self.dtype:
            raise ValueError(
                f"{path} decoded to {tuple(out.shape)} {out.dtype}, expected {self.item_shape} {self.dtype}"
            )
        return out

    def positions(self, idx: Any) -> Tensor:
        """``idx`` (an int, slice, list, ``int64`` or boolean tensor) as ``int64`` positions."""
        if isinstance(idx, slice):
            return torch.arange(len(self))[idx]
        pos = torch.as_tensor(idx)
        if pos.dtype == torch.bool:
            if pos.shape != (len(self),):
                raise IndexError(f"boolean index of shape {tuple(pos.shape)} for {len(self)} files")
            return torch.nonzero(pos).flatten()
        return pos.long().reshape(-1)

    def __getitem__(self, idx: Any) -> Tensor:
        if isinstance(idx, int | np.integer) or (isinstance(idx, Tensor) and idx.ndim == 0 and idx.dtype != torch.bool):
            return self.load(int(idx))
        pos = self.positions(idx).tolist()
        out = torch.empty((len(pos), *self.item_shape), dtype=self.dtype)
        for k, i in enumerate(pos):
            out[k] = self.load(i)
        return out

    # ------------------------------------------------------------------------------------------- without decoding
    def take(self, idx: Any) -> FileInputs:
        """The samples at ``idx``, still on disk (nothing is decoded)."""
        return FileInputs(self.files[self.positions(idx).numpy()], self.decode, self.item_shape, self.dtype)

    @staticmethod
    def cat(parts: Sequence[FileInputs]) -> FileInputs:
        """The samples of ``parts`` in order; they must share the decoder, item shape and dtype."""
        if not parts or not all(isinstance(p, FileInputs) for p in parts):
            raise ValueError("FileInputs.cat needs FileInputs only: in-memory and lazy inputs cannot be concatenated")
        first = parts[0]
        for p in parts[1:]:
            if not _same_decoder(p.decode, first.decode) or (p.item_shape, p.dtype) != (first.item_shape, first.dtype):
                raise ValueError(
                    f"cannot concatenate FileInputs with different decoders, item shapes or dtypes: {first!r} and "
                    f"{p!r} ({first.decode!r} and {p.decode!r})"
                )
        return FileInputs(np.concatenate([p.files for p in parts]), first.decode, first.item_shape, first.dtype)


def _same_decoder(a: Decoder, b: Decoder) -> bool:
    """Equal decoders, counting ``functools.partial`` objects of the same function and arguments as equal."""
    if a is b or a == b:
        return True
    return (
        isinstance(a, partial)
        and isinstance(b, partial)
        and (a.func, a.args, a.keywords) == (b.func, b.args, b.keywords)
    )


def is_lazy(x: Tensor | FileInputs) -> bool:
    """Whether inputs are decoded on access (:class:`FileInputs`) rather than held in memory."""
    return isinstance(x, FileInputs)


# ------------------------------------------------------------------------------- compact copies in replay memories
def shrink_images(raw: Tensor, size: int) -> Tensor:
    """``uint8`` images ``[B, C, H, W]`` downscaled to ``size x size`` (antialiased bilinear, rounded): the compact copy
    a stream may store in replay memories instead of the exact sample. Lossy: replaying it changes results."""
    if raw.shape[-2:] == (size, size):
        return raw
    small = F.interpolate(raw.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return small.round_().clamp_(0, 255).to(raw.dtype)


def grow_images(stored: Tensor, size: int) -> Tensor:
    """Stored images back at ``size x size`` (bilinear, rounded to ``uint8``), the input size the stream's transforms
    expect; images already at that size (exact copies) are returned as they are."""
    if stored.shape[-2:] == (size, size):
        return stored
    big = F.interpolate(stored.float(), size=(size, size), mode="bilinear", align_corners=False)
    return big.round_().clamp_(0, 255).to(stored.dtype)
