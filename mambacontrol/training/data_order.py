"""A seeded, resumable, endless order of batches over a dataset.

The order is one long stream of item indices: epoch ``e`` is the permutation
``numpy.random.default_rng([seed, e]).permutation(n)``, and the epochs follow each other (a batch
may straddle two epochs, so every batch is full). The state is ``(epoch, position)``: where the
next item is taken from. A run resumed from a saved state continues the stream exactly where it
stopped, whatever happened in between.

Random augmentation is reproducible the same way. The item at ``(epoch, position)`` gets its own
seed, :func:`item_seed` ``(seed, epoch, position)``, and before the item is loaded every MONAI
``Randomizable`` transform the loader can reach is re-seeded with it (``set_random_state``): the
dataset's own ``transform`` (``monai.data.Dataset``, ``CacheDataset`` and ``PersistentDataset``
apply their random transforms when an item is read) and the optional ``augment`` transform applied
afterwards. The torch RNG is forked and seeded with it too while the item is built, for transforms
that draw from torch. So a resumed run sees the same crops, flips and noise for the same items,
and the training loop's own RNG stream is never touched by data loading. Transforms that draw from
NumPy's or Python's global RNG are not reproducible; use MONAI's randomizable transforms.

With several processes (DDP), each step consumes ``batch_size * world_size`` items of the one
stream and process ``rank`` takes every ``world_size``-th of them, so all processes share one
state and the main process's checkpoint resumes them all.

Example::

    batches = ResumableBatches(dataset, batch_size=2, seed=0, augment=RandSpatialCropd(...))
    it = iter(batches)
    first = next(it)                # a collated batch: dict of (B, ...) tensors
    state = batches.state_dict()    # {"epoch": 0, "position": 2, ...}: JSON, saved with checkpoints

:class:`RandomIndexBatches` is the other order a stage may use: every batch drawn with replacement
from tensors held in memory, by ``torch.randint`` from a seeded ``torch.Generator`` (the graph
stage's pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mambacontrol.errors import ConfigError
from mambacontrol.pipeline.shards import process_state

logger = logging.getLogger(__name__)

_MAX_SEED = 2**32


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the item at ``position`` of epoch ``epoch``'s permutation, in ``[0, 2**32)``."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1)[0])


class BatchOrder:
    """The index stream: which dataset items each step's batch holds, with their seeds.

    Args:
        num_items: dataset size N (≥ 1).
        batch_size: items per batch per process.
        seed: seed of the permutations.
        rank: this process's index among ``world_size`` processes.
        world_size: number of processes sharing the stream.
        shuffle: ``False`` keeps the dataset order in every epoch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        if num_items < 1:
            raise ValueError(f"num_items must be ≥ 1, got {num_items} (the dataset is empty)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world_size {world_size}")
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.position = 0
        self._perm_epoch = -1
        self._perm = np.arange(self.num_items)

    def permutation(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s order of the N items."""
        if epoch != self._perm_epoch:
            self._perm = (np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_items)
                          if self.shuffle else np.arange(self.num_items))
            self._perm_epoch = epoch
        return self._perm

    def next_batch(self) -> list[tuple[int, int]]:
        """This process's next batch as ``(dataset index, item seed)`` pairs; advances the state."""
        chosen = []
        for k in range(self.batch_size * self.world_size):
            if k % self.world_size == self.rank:
                index = int(self.permutation(self.epoch)[self.position])
                chosen.append((index, item_seed(self.seed, self.epoch, self.position)))
            self.position += 1
            if self.position == self.num_items:
                self.epoch, self.position = self.epoch + 1, 0
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: where the stream stands, and what it was built with."""
        return {"epoch": self.epoch, "position": self.position, "num_items": self.num_items,
                "batch_size": self.batch_size, "seed": self.seed, "shuffle": self.shuffle,
                "world_size": self.world_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved state.

        Raises:
            ConfigError: when the saved order was built over another dataset size, batch size,
                seed or shuffling (the same items would not come back).
        """
        for key in ("num_items", "batch_size", "seed", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise ConfigError(f"the checkpoint's data order has {key}={state.get(key)!r}, this "
                                  f"run has {getattr(self, key)!r}; resume with the same dataset "
                                  f"and config, or start a new run")
        if state.get("world_size") != self.world_size:
            logger.warning("resuming a data order written by %s processes with %s: the stream "
                           "continues, but batches are split differently", state.get("world_size"),
                           self.world_size)
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.num_items:
            raise ConfigError(f"the checkpoint's data order position ({epoch}, {position}) is "
                              f"invalid for {self.num_items} items; the checkpoint is corrupt")
        self.epoch, self.position = epoch, position

    def copy(self) -> BatchOrder:
        """An independent order in the same state."""
        twin = BatchOrder(self.num_items, self.batch_size, self.seed, self.rank, self.world_size,
                          self.shuffle)
        twin.epoch, twin.position = self.epoch, self.position
        return twin

    def advanced(self, steps: int) -> tuple[int, int]:
        """``(epoch, position)`` after ``steps`` more batches, without changing the state."""
        flat = (self.epoch * self.num_items + self.position
                + steps * self.batch_size * self.world_size)
        return divmod(flat, self.num_items)


class ResumableBatches:
    """Endless, resumable, seeded batches of a map-style dataset (e.g. a MONAI dataset of dicts).

    Iterating yields collated batches forever; :meth:`state_dict` / :meth:`load_state_dict` save
    and restore where the stream stands (the engine stores it in every checkpoint). Items whose
    transforms return a list of samples (e.g. ``RandCropByPosNegLabeld(num_samples=k)``) are
    flattened into the batch by MONAI's ``list_data_collate``.

    Args:
        dataset: ``len()`` and ``dataset[i]``; when it has a MONAI ``transform`` attribute, that
            transform is re-seeded for every item (see the module docstring).
        batch_size: items per batch per process.
        seed: seed of the order and of the per-item augmentation seeds.
        augment: an optional MONAI randomizable transform applied to each item after loading.
        collate_fn: merges a list of items into a batch (default: ``monai.data.list_data_collate``).
        num_workers: background loader processes (0 loads in this process).
        rank: this process's index (see :class:`BatchOrder`); ``None`` asks Accelerate
            (``PartialState().process_index``), which is 0 outside ``accelerate launch`` or
            ``torchrun``.
        world_size: number of processes; ``None`` asks Accelerate
            (``PartialState().num_processes``).
        shuffle: ``False`` keeps the dataset order.
    """

    def __init__(self, dataset: Sequence[Any], batch_size: int, seed: int = 0,
                 augment: Callable[[Any], Any] | None = None,
                 collate_fn: Callable[[list[Any]], Any] | None = None, num_workers: int = 0,
                 rank: int | None = None, world_size: int | None = None, shuffle: bool = True):
        if augment is not None and not hasattr(augment, "set_random_state"):
            raise ValueError(f"augment must be a MONAI randomizable transform (with "
                             f"set_random_state), got {type(augment).__name__}; wrap it in "
                             f"monai.transforms.Compose")
        if num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {num_workers}")
        if collate_fn is None:
            from monai.data import list_data_collate  # heavy (MONAI, 3 s): only when needed
            collate_fn = list_data_collate
        if rank is None or world_size is None:
            state = process_state()
            rank = state.process_index if rank is None else rank
            world_size = state.num_processes if world_size is None else world_size
        self.order = BatchOrder(len(dataset), batch_size, seed, rank, world_size, shuffle)
        self.items = SeededItems(dataset, augment)
        self.collate_fn = collate_fn
        self.num_workers = int(num_workers)
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers == 0:
            while True:
                yield self.collate_fn([self.items[key] for key in self.order.next_batch()])
        else:
            # Workers prefetch ahead, so the loader draws from a copy of the order and this
            # order's state advances only as batches are handed out.
            start = self.order.copy()
            loader = torch.utils.data.DataLoader(
                self.items, batch_sampler=_EndlessSampler(self.order.copy()),
                num_workers=self.num_workers, collate_fn=self.collate_fn)
            for handed, batch in enumerate(loader, start=1):
                self.order.epoch, self.order.position = start.advanced(handed)
                yield batch

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state of the order (see :meth:`BatchOrder.state_dict`)."""
        return self.order.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved state; takes effect at the next ``iter()``."""
        self.order.load_state_dict(state)


class RandomIndexBatches:
    """Endless batches of in-memory tensors, each ``min(batch_size, N)`` items drawn uniformly
    with replacement (``torch.randint`` from a ``torch.Generator`` seeded with ``seed``).

    Args:
        tensors: name → (N, ...) tensor; a batch holds the same items of each.
        batch_size: items per batch (at most N are drawn).
        seed: seed of the generator.

    The state (``state_dict``) is the generator's, as JSON.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], batch_size: int, seed: int):
        self.tensors = dict(tensors)
        sizes = {name: len(t) for name, t in self.tensors.items()}
        if not sizes or len(set(sizes.values())) != 1 or min(sizes.values()) < 1:
            raise ValueError(f"tensors must share one non-zero leading size; got {sizes}")
        if batch_size < 1:
            raise ConfigError(f"batch_size {batch_size} must be ≥ 1")
        self.num_items = next(iter(sizes.values()))
        self.batch_size = min(int(batch_size), self.num_items)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            index = torch.randint(self.num_items, (self.batch_size,), generator=self.generator)
            yield {name: t[index] for name, t in self.tensors.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


class SeededItems(torch.utils.data.Dataset):
    """``items[(index, seed)]``: ``dataset[index]`` with every random transform seeded by ``seed``.

    Args:
        dataset: the map-style dataset.
        augment: optional MONAI randomizable transform applied after loading.
    """

    def __init__(self, dataset: Sequence[Any], augment: Callable[[Any], Any] | None = None):
        self.dataset = dataset
        self.augment = augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transform = getattr(self.dataset, "transform", None)
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=seed)
            item = self.dataset[index]
            if self.augment is not None:
                self.augment.set_random_state(seed=(seed + 1) % _MAX_SEED)
                item = self.augment(item)
        return item


class _EndlessSampler:
    """Batch sampler handing an order's batches to a ``DataLoader``."""

    def __init__(self, order: BatchOrder):
        self.order = order

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            yield self.order.next_batch()
