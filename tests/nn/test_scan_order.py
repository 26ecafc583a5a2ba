"""Scan orders: permutations with exact inverses, the documented raster, computed once."""

import pytest
import torch

from mambacontrol.nn import DIRECTIONS, scan_order
from mambacontrol.nn.scan_order import check_directions, stacked_orders


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 1, 1), (5, 1, 3), (4, 4, 4)])
def test_every_direction_is_a_permutation(shape):
    length = shape[0] * shape[1] * shape[2]
    for direction in DIRECTIONS:
        order = scan_order(shape, direction)
        assert order.dtype == torch.int64
        assert torch.equal(order.sort().values, torch.arange(length))


def test_documented_rasters():
    shape = (2, 3, 4)
    volume = torch.arange(24).view(shape)
    assert torch.equal(scan_order(shape, "z+"), torch.arange(24))
    # x fastest, then z
    assert torch.equal(scan_order(shape, "x+")[:4], torch.tensor([0, 12, 1, 13]))
    assert torch.equal(scan_order(shape, "x+"), volume.permute(1, 2, 0).reshape(-1))
    assert torch.equal(scan_order(shape, "y+"), volume.permute(0, 2, 1).reshape(-1))
    for axis in "xyz":
        assert torch.equal(scan_order(shape, axis + "-"), scan_order(shape, axis + "+").flip(0))


@pytest.mark.parametrize("directions", [DIRECTIONS, ("y-",), ("z+", "x-", "y+")])
def test_merge_inverts_gather_exactly(directions):
    shape = (3, 4, 5)
    length, count = 60, len(directions)
    gather, merge = stacked_orders(shape, directions, torch.device("cpu"))
    tokens = torch.randn(2, length, 7)
    sequences = tokens.index_select(1, gather)
    for k, direction in enumerate(directions):
        assert torch.equal(sequences[:, k * length:(k + 1) * length],
                           tokens[:, scan_order(shape, direction)])
    back = sequences.index_select(1, merge).view(2, count, length, 7)
    assert torch.equal(back, tokens.unsqueeze(1).expand(-1, count, -1, -1))


def test_orders_are_cached_per_grid():
    key = ((6, 5, 4), ("x+", "y-"), torch.device("cpu"))
    first = stacked_orders(*key)
    hits = stacked_orders.cache_info().hits
    assert stacked_orders(*key) is first
    assert stacked_orders.cache_info().hits == hits + 1


@pytest.mark.parametrize("directions,match", [
    (("x+", "w+"), "'w\\+' is not one of"),
    (("x+", "x+"), "repeats a direction"),
    ((), "non-empty"),
    ("x+", "non-empty sequence"),
])
def test_bad_directions(directions, match):
    with pytest.raises(ValueError, match=match):
        check_directions(directions)
