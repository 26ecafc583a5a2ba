import json

import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, Lambdad, RandFlipd, RandSpatialCropd

from mambacontrol.errors import ConfigError
from mambacontrol.training.data_order import (
    BatchOrder,
    RandomIndexBatches,
    ResumableBatches,
    item_seed,
)


def volumes(n=5, size=6):
    return [{"x": np.full((1, size, size, size), float(i), dtype=np.float32)
             + np.arange(size ** 3, dtype=np.float32).reshape(1, size, size, size) / 1000,
             "id": i} for i in range(n)]


def crop():
    return Compose([RandSpatialCropd("x", (3, 3, 3), random_size=False), RandFlipd("x", prob=0.5)])


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_every_epoch_is_a_permutation_and_batches_straddle_epochs():
    order = BatchOrder(5, batch_size=3, seed=4)
    stream = [i for _ in range(5) for i, _ in order.next_batch()]   # 15 items = 3 epochs
    for e in range(3):
        assert sorted(stream[5 * e:5 * e + 5]) == list(range(5))
        assert stream[5 * e:5 * e + 5] == order.permutation(e).tolist()
    assert order.permutation(0).tolist() != order.permutation(1).tolist()
    assert order.state_dict()["epoch"] == 3 and order.state_dict()["position"] == 0
    assert BatchOrder(5, 3, seed=5).permutation(0).tolist() != order.permutation(0).tolist()
    assert BatchOrder(5, 3, shuffle=False).next_batch()[0][0] == 0


def test_item_seeds_depend_on_seed_epoch_and_position():
    seeds = {item_seed(s, e, p) for s in (0, 1) for e in (0, 1) for p in (0, 1, 2)}
    assert len(seeds) == 12 and all(0 <= s < 2**32 for s in seeds)


def test_ranks_split_one_stream():
    single = BatchOrder(7, batch_size=4, seed=1)
    ranks = [BatchOrder(7, batch_size=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(5):
        both = single.next_batch()
        r0, r1 = ranks[0].next_batch(), ranks[1].next_batch()
        assert r0 == both[0::2] and r1 == both[1::2]
    assert ranks[0].state_dict()["position"] == single.state_dict()["position"]


def test_resumed_batches_and_crops_equal_uninterrupted():
    data = volumes()
    full = take(iter(ResumableBatches(data, 2, seed=3, augment=crop())), 7)
    first = ResumableBatches(data, 2, seed=3, augment=crop())
    take(iter(first), 4)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, 3)
    resumed = ResumableBatches(data, 2, seed=3, augment=crop())
    resumed.load_state_dict(state)
    rest = take(iter(resumed), 3)
    for a, b in zip(full[4:], rest):
        assert torch.equal(a["x"], b["x"]) and a["id"].tolist() == b["id"].tolist()
    crops = torch.cat([b["x"] for b in full]).flatten(1)
    assert crops.shape[1] == 27 and len({tuple(c.tolist()) for c in crops}) == len(crops)


def test_random_transforms_inside_a_monai_dataset_are_reseeded():
    def dataset():
        return Dataset(volumes(), transform=Compose([Lambdad("x", lambda x: x * 2), crop()]))

    full = take(iter(ResumableBatches(dataset(), 2, seed=0)), 5)
    first = ResumableBatches(dataset(), 2, seed=0)
    take(iter(first), 3)
    resumed = ResumableBatches(dataset(), 2, seed=0)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(full[3:], take(iter(resumed), 2)):
        assert torch.equal(a["x"], b["x"])


def test_training_rng_is_untouched_by_loading():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    take(iter(ResumableBatches(volumes(), 2, seed=0, augment=crop())), 3)
    assert torch.equal(torch.rand(3), expected)


def test_workers_give_the_same_batches_and_state():
    data = volumes()
    plain = ResumableBatches(data, 2, seed=1, augment=crop())
    expected = take(iter(plain), 3)
    workers = ResumableBatches(data, 2, seed=1, augment=crop(), num_workers=1)
    got = take(iter(workers), 3)
    for a, b in zip(expected, got):
        assert torch.equal(a["x"], b["x"])
    assert workers.state_dict() == plain.state_dict()   # consumed, not prefetched


def test_mismatched_state_is_refused():
    state = BatchOrder(5, 2, seed=1).state_dict()
    with pytest.raises(ConfigError, match="num_items=5, this run has 6"):
        BatchOrder(6, 2, seed=1).load_state_dict(state)
    with pytest.raises(ConfigError, match="seed=1, this run has 2"):
        BatchOrder(5, 2, seed=2).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_items must be ≥ 1"):
        BatchOrder(0, 1)
    with pytest.raises(ValueError, match="rank 2 is not within world_size 2"):
        BatchOrder(3, 1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="augment must be a MONAI randomizable transform"):
        ResumableBatches(volumes(), 2, augment=lambda d: d)


def test_random_index_batches_draw_with_replacement_and_resume_from_their_state():
    tensors = {"x": torch.arange(5.0), "y": torch.arange(5) * 10}
    batches = RandomIndexBatches(tensors, batch_size=8, seed=4)
    stream = iter(batches)
    first = next(stream)
    assert first["x"].shape == (5,) and torch.equal(first["y"], first["x"].long() * 10)  # ≤ N items
    generator = torch.Generator().manual_seed(4)
    assert torch.equal(first["x"], torch.randint(5, (5,), generator=generator).float())
    state = json.loads(json.dumps(batches.state_dict()))
    expected = [next(stream) for _ in range(3)]
    again = RandomIndexBatches(tensors, batch_size=8, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(iter(again), expected))
    with pytest.raises(ValueError, match="one non-zero leading size"):
        RandomIndexBatches({"x": torch.zeros(3), "y": torch.zeros(4)}, 2, 0)
