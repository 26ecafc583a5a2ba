"""Atomic file writes that never overwrite an input."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from mambacontrol.errors import InputFileError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Raise if ``path`` is (or resolves to) one of ``inputs``.

    Raises:
        InputFileError: naming the output that would overwrite an input.
    """
    out = Path(path)
    for src in inputs:
        src_path = Path(src)
        if out.resolve() == src_path.resolve() or _same_file(out, src_path):
            raise InputFileError(
                f"{out}: output would overwrite the input file {src_path}; "
                "choose another output path"
            )


def temp_path_for(path: Path) -> Path:
    """A hidden temporary sibling of ``path`` that keeps its full suffix (``.nii.gz`` stays)."""
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike,
                inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed onto ``path`` in one step.

    On error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    check_not_input(target, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str,
                      inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path, inputs) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes,
                       inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, inputs) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file, a symbolic link (not what it points to) or a folder tree; a missing path is
    fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def replace_dir(staged: str | os.PathLike, target: str | os.PathLike,
                aside: str | os.PathLike | None = None) -> Path:
    """Move a finished folder (or file) ``staged`` onto ``target`` (a sibling on the same file
    system).

    An existing ``target`` is first renamed to ``aside`` (default: a hidden ``.<name>.<id>.old``
    beside it) and deleted only once ``staged`` is in its place, so at every moment one complete
    version exists; should the second rename fail, the old one is put back.
    """
    staged, target = Path(staged), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.replace(staged, target)
        return target
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old") if aside is None \
        else Path(aside)
    os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(old, target)
        raise
    remove_path(old)
    return target
