"""Which items of a list this process takes: job-array parts, then Accelerate's processes.

A batch (``predict --manifest``, ``evaluate``) is split twice:

1. ``--num-parts K --part-id I`` (one job of a job array): item ``i`` (in manifest order) belongs
   to part ``i mod K``, so a part's items never depend on how many processes run it.
2. Within a part, under ``accelerate launch`` (or ``torchrun``), process ``r`` of ``N`` takes
   the part's items ``r, r + N, r + 2N ...`` (Accelerate's ``PartialState``).

Every item is taken by exactly one (part, process); the split depends only on the list's order,
K, I and N. Example::

    shard = Shard.current(num_parts=2, part_id=1)   # under `accelerate launch` with 3 processes
    mine = shard.select(scans)                      # every 6th scan, from the 2nd (rank 0)...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mambacontrol.errors import MambaControlError
from mambacontrol.io.outputs import OutputFolder, OutputFolderError

T = TypeVar("T")


def check_parts(num_parts: int, part_id: int | None) -> None:
    """Raise one line unless ``--num-parts``/``--part-id`` are a valid pair.

    Raises:
        MambaControlError: ``num_parts < 1``; ``part_id`` outside ``0 … num_parts − 1``; a
            ``part_id`` without ``num_parts > 1`` or the reverse.
    """
    if isinstance(num_parts, bool) or int(num_parts) != num_parts or num_parts < 1:
        raise MambaControlError(f"--num-parts {num_parts} must be a whole number ≥ 1")
    if num_parts > 1 and part_id is None:
        raise MambaControlError(f"--num-parts {num_parts} needs --part-id (0 to {num_parts - 1}): "
                                "which part this job runs, e.g. $SLURM_ARRAY_TASK_ID")
    if part_id is None:
        return
    if num_parts == 1:
        raise MambaControlError(f"--part-id {part_id} needs --num-parts K > 1 (the number of "
                                "jobs the batch is split into)")
    if isinstance(part_id, bool) or int(part_id) != part_id or not 0 <= part_id < num_parts:
        raise MambaControlError(f"--part-id {part_id} is not one of 0 to {num_parts - 1} (with "
                                f"--num-parts {num_parts}); parts are numbered from 0")


def process_state() -> Any:
    """Accelerate's ``PartialState`` of this process (the CPU when there is no GPU, so that
    ``torchrun``/``accelerate launch`` without GPUs start a gloo group)."""
    import torch  # heavy: imported when a batch runs
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def process_device() -> str:
    """This process's device under a launch (its own GPU, e.g. ``cuda:1``; else ``cpu``)."""
    return str(process_state().device)


@dataclass(frozen=True)
class Shard:
    """This process's share of a batch.

    Attributes:
        num_parts: K, the job-array parts (1: no parts).
        part_id: I, this job's part (0 without parts).
        process_index: r, this process within the launch (0 without one).
        num_processes: N, the launch's processes (1 without one).
    """

    num_parts: int = 1
    part_id: int = 0
    process_index: int = 0
    num_processes: int = 1

    @classmethod
    def current(cls, num_parts: int = 1, part_id: int | None = None) -> Shard:
        """The share of this process: the given part (checked, see :func:`check_parts`) and the
        process from Accelerate's state."""
        check_parts(num_parts, part_id)
        state = process_state()
        return cls(num_parts, part_id or 0, state.process_index, state.num_processes)

    @property
    def is_main(self) -> bool:
        """Whether this is the launch's main process (it claims and merges the output)."""
        return self.process_index == 0

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1

    @property
    def part(self) -> str | None:
        """The part's label, ``part-<I>-of-<K>`` (None without parts)."""
        return None if self.num_parts == 1 else f"part-{self.part_id}-of-{self.num_parts}"

    def part_indices(self, n: int) -> range:
        """The indices of an ``n``-item list in this job's part (every process's)."""
        return range(self.part_id, n, self.num_parts)

    def indices(self, n: int) -> list[int]:
        """The indices of an ``n``-item list that this process takes (ascending)."""
        return list(self.part_indices(n)[self.process_index::self.num_processes])

    def select(self, items: Sequence[T]) -> list[T]:
        """The items this process takes, in their order."""
        return [items[i] for i in self.indices(len(items))]

    def wait(self) -> None:
        """Wait until every process of the launch gets here (nothing without a launch)."""
        if self.distributed:
            process_state().wait_for_everyone()

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in process order, on every process."""
        if not self.distributed:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def merge(self, order: Sequence[str], done: Sequence[str],
              failed: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """A batch's outcome over every process: ``(done, {name: error})`` of each, merged and
        put in ``order`` (the batch's names)."""
        outcomes = self.gather((list(done), dict(failed)))
        every_done = {name for names, _ in outcomes for name in names}
        errors = {name: error for _, errs in outcomes for name, error in errs.items()}
        return ([n for n in order if n in every_done],
                {n: errors[n] for n in order if n in errors})

    def run_on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the main process while the others wait for it, and give its result
        (picklable) to every process; its one-line error (:class:`MambaControlError`) is raised
        on every process, not only on the main one."""
        value, error = None, None
        if self.is_main:
            try:
                value = work()
            except MambaControlError as exc:
                error = exc
        value, message = self.broadcast((value, None if error is None else str(error)))
        if error is not None:
            raise error
        if message is not None:
            raise MambaControlError(message)
        return value

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` (picklable), on every process."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]


@contextlib.contextmanager
def claim_shared(shard: Shard, path: str | os.PathLike, command: str, *,
                 inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
                 resume: bool = False, free: Sequence[str] = ()) -> Iterator[OutputFolder]:
    """``path`` claimed for ``command`` by every process of the launch, as one writer.

    The main process claims it (for its part, with parts) and checks that ``free`` names are
    absent or the command's own; the others then join its claim (see
    :mod:`mambacontrol.io.outputs`). A refusal reaches every process as the same one-line error.
    On leaving, the main process folds the other writers' records into the marker (after they
    all got there) and releases the folder.

    Raises:
        OutputFolderError: the main process's refusal, on every process.
    """
    folder, error = None, None
    if shard.is_main:
        try:
            folder = OutputFolder.claim(path, command, inputs=inputs, overwrite=overwrite,
                                        resume=resume, part=shard.part)
            folder.check_free(free)
        except OutputFolderError as exc:
            if folder is not None:
                folder.release(failed=True)
            error = exc
    message = shard.broadcast(None if error is None else str(error))
    if message is not None:
        raise error if error is not None else OutputFolderError(message)
    if folder is None:
        folder = OutputFolder.join(path, command, f"rank-{shard.process_index}", part=shard.part)
    if not shard.is_main:
        yield folder
        shard.wait()
        return
    with folder:
        yield folder
        shard.wait()  # every writer has recorded its entries
        if folder.writer is None:
            folder.fold_writers()
