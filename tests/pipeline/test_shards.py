"""Which items a job-array part and a launch's process take, and the checks of the flags."""

import pytest

from mambacontrol.errors import MambaControlError
from mambacontrol.pipeline.shards import Shard, check_parts


def test_parts_and_processes_take_every_item_exactly_once():
    items = list(range(11))
    taken = [i for part in range(3) for rank in range(2)
             for i in Shard(3, part, rank, 2).select(items)]
    assert sorted(taken) == items
    # a part's items do not depend on how many processes run it
    assert Shard(3, 1).select(items) == [1, 4, 7, 10]
    assert sorted(Shard(3, 1, 0, 2).select(items) + Shard(3, 1, 1, 2).select(items)) == [1, 4, 7,
                                                                                          10]
    assert Shard(3, 1, 1, 2).select(items) == [4, 10]
    assert Shard().select(items) == items and Shard(1, 0, 1, 4).select(items) == [1, 5, 9]
    assert Shard(4, 3).select(["a", "b"]) == []  # more parts than items: some parts are empty


def test_part_labels_and_the_main_process():
    assert Shard(2, 1).part == "part-1-of-2" and Shard().part is None
    assert Shard(1, 0, 0, 2).is_main and not Shard(1, 0, 1, 2).is_main
    assert Shard().current().num_processes == 1  # no launch: one process


@pytest.mark.parametrize("num_parts, part_id, message", [
    (2, 3, "--part-id 3 is not one of 0 to 1"),
    (2, -1, "--part-id -1 is not one of 0 to 1"),
    (2, None, "--num-parts 2 needs --part-id"),
    (1, 0, "--part-id 0 needs --num-parts K > 1"),
    (0, None, "--num-parts 0 must be a whole number ≥ 1"),
])
def test_bad_parts_are_refused_in_one_line(num_parts, part_id, message):
    with pytest.raises(MambaControlError, match=message) as err:
        check_parts(num_parts, part_id)
    assert "\n" not in str(err.value)


def test_good_parts_pass():
    check_parts(1, None)
    check_parts(4, 3)
