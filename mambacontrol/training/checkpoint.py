"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``<root>/step-000123/`` holding

- ``<file>.safetensors`` for each group of tensors (the engine writes ``model.<name>``,
  ``ema.<name>``, ``optimizer``, ``rng`` and any other state that holds tensors);
- ``state.json``: the step, the JSON half of every flattened state (see :func:`flatten_state`),
  and the size and SHA-256 of every tensor file, so a truncated or altered file is refused.

Writes are atomic: everything goes into a hidden temporary folder, each file is fsync'ed, and the
folder is renamed to ``step-000123`` in one step (then the parent folder is fsync'ed). A folder
named ``step-*`` is therefore always complete; a crash mid-write leaves only a hidden temporary
folder, removed by the next save. :func:`write_checkpoint` keeps the newest ``keep`` checkpoints.

:func:`flatten_state` turns any nested state (an optimizer's or LR scheduler's ``state_dict``,
EMA state, RNG states) into a JSON tree plus a flat ``{key: tensor}`` dict, and
:func:`unflatten_state` rebuilds it exactly: tuples stay tuples, integer dict keys stay integers,
floats keep every bit (JSON writes the shortest repr that reads back equal), tensors keep dtype.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mambacontrol.errors import ModelError
from mambacontrol.io.atomic import replace_dir
from mambacontrol.io.digest import sha256_file

FORMAT_VERSION = 1
STATE_NAME = "state.json"
TENSOR_SUFFIX = ".safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    """A checkpoint read back from disk.

    Attributes:
        path: the ``step-XXXXXX`` folder.
        step: the optimizer step it was written after.
        state: ``state.json`` without its file records.
        tensors: ``{file stem: {key: tensor}}`` on the CPU.
    """

    path: Path
    step: int
    state: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]


# --- flattening ----------------------------------------------------------------------------------

def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able tree and its tensors.

    Tensors are replaced by ``{"__tensor__": key}``, tuples by ``{"__tuple__": [...]}``, dicts
    whose keys are not all strings by ``{"__items__": [[key, value], ...]}``; numpy scalars
    become Python numbers.

    Args:
        obj: dicts, lists, tuples, tensors, str, int, float, bool, None (nested freely).
        prefix: prepended to every tensor key (``"optimizer"`` gives ``optimizer.state.0.exp_avg``).

    Returns:
        ``(tree, tensors)``; ``unflatten_state(tree, tensors)`` rebuilds ``obj``.

    Raises:
        TypeError: naming the path of a value that cannot be stored (a function, an object).
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, prefix, tensors)
    return tree, tensors


def unflatten_state(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`.

    Raises:
        ModelError: when the tree names a tensor that ``tensors`` lacks.
    """
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            key = tree["__tensor__"]
            if key not in tensors:
                raise ModelError(f"checkpoint state names tensor {key!r}, which its tensor files "
                                 f"lack; the checkpoint is corrupt, resume from an earlier one")
            return tensors[key]
        if set(tree) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in tree["__tuple__"])
        if set(tree) == {"__items__"}:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors)
                    for k, v in tree["__items__"]}
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    return tree


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        if key in tensors:
            raise TypeError(f"two tensors would share the key {key!r}")
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"{path or '<state>'}: dict key {k!r} ({type(k).__name__}) "
                                f"cannot be stored; use str or int keys")
            items.append([k, _encode(v, _join(path, k), tensors)])
        return {"__items__": items}
    raise TypeError(f"{path or '<state>'}: a {type(obj).__name__} cannot be stored in a checkpoint "
                    f"(only tensors, numbers, strings, None, lists, tuples and dicts)")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- RNG state -----------------------------------------------------------------------------------

def capture_rng_state(device: torch.device | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """This process's Python, NumPy and torch (CPU and, on a CUDA device, CUDA) RNG states.

    Returns:
        ``(tree, tensors)``: Python/NumPy states as JSON, torch states as uint8 tensors.
    """
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tree = {"python": [version, list(mt), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    return tree, tensors


def restore_rng_state(tree: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                      device: torch.device | None = None) -> None:
    """Set the RNG states captured by :func:`capture_rng_state`."""
    version, mt, gauss = tree["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = tree["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if device is not None and device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)


# --- folders -------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    """``step-000123``."""
    return f"step-{int(step):06d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, folder)``, oldest first."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder under ``root``, or ``None``."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def write_checkpoint(root: str | os.PathLike, step: int, state: Mapping[str, Any],
                     tensors: Mapping[str, Mapping[str, torch.Tensor]], keep: int | None = None,
                     ) -> Path:
    """Write ``<root>/step-XXXXXX/`` atomically, then keep only the newest ``keep`` checkpoints.

    Args:
        root: the stage's checkpoint folder.
        step: the optimizer step just finished.
        state: JSON-able metadata (``step`` and ``files`` are added).
        tensors: ``{file stem: {key: tensor}}``; each becomes ``<stem>.safetensors``.
        keep: how many checkpoints to keep (``None`` keeps all).

    Returns:
        The new checkpoint folder.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be ≥ 1, got {keep}")
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    target = base / checkpoint_name(step)
    tmp = base / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        files = {}
        for stem, group in tensors.items():
            if not re.fullmatch(r"[\w.\-]+", stem):
                raise ValueError(f"tensor file name {stem!r} must be letters, digits, "
                                 "'.', '-', '_'")
            path = tmp / f"{stem}{TENSOR_SUFFIX}"
            save_file(_storable(group), str(path))
            files[path.name] = _file_record(path)
            _fsync(path)
        record = {"format": FORMAT_VERSION, **state, "step": int(step), "files": files}
        state_path = tmp / STATE_NAME
        state_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
        _fsync(state_path)
        _fsync(tmp)
        replace_dir(tmp, target)  # rewriting the same step (e.g. a repeated final save) swaps
        _fsync(base)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if keep is not None:
        for _, old_dir in list_checkpoints(base)[:-keep]:
            shutil.rmtree(old_dir, ignore_errors=True)
    return target


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint folder.

    Raises:
        ModelError: one line naming the folder and what is missing or corrupt, and the fix.
    """
    folder = Path(path)
    fix = "delete this folder to resume from the previous checkpoint"
    state_path = folder / STATE_NAME
    if not state_path.is_file():
        raise ModelError(f"{folder}: not a checkpoint ({STATE_NAME} is missing); {fix}")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{state_path}: corrupt ({exc}); {fix}") from None
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
        raise ModelError(f"{state_path}: corrupt (no file records); {fix}")
    if state.get("format") != FORMAT_VERSION:
        raise ModelError(f"{folder}: checkpoint format {state.get('format')!r}, this version "
                         f"reads {FORMAT_VERSION}; resume with the mambacontrol that wrote it")
    tensors = {}
    for name, expected in state.pop("files").items():
        file = folder / name
        if not file.is_file():
            raise ModelError(f"{folder}: {name} is missing; {fix}")
        actual = _file_record(file)
        if actual["bytes"] != expected.get("bytes"):
            raise ModelError(f"{file}: {actual['bytes']} bytes, {expected.get('bytes')} were "
                             f"written (truncated?); {fix}")
        if actual["sha256"] != expected.get("sha256"):
            raise ModelError(f"{file}: contents changed since it was written (checksum "
                             f"mismatch); {fix}")
        try:
            tensors[name.removesuffix(TENSOR_SUFFIX)] = load_file(str(file), device="cpu")
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelError(f"{file}: corrupt ({exc}); {fix}") from None
    return Checkpoint(path=folder, step=int(state["step"]), state=state, tensors=tensors)


def check_tensors_match(what: str, expected: Mapping[str, torch.Tensor],
                        saved: Mapping[str, torch.Tensor], where: Path) -> None:
    """Raise unless ``saved`` has exactly ``expected``'s keys and shapes.

    Raises:
        ModelError: naming ``what``, the first missing/unexpected key or the first shape mismatch.
    """
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        raise ModelError(f"{where}: the checkpoint's {what} does not match this run's (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}); it was written for another "
                         f"model, so resume with the config that wrote it or use another output "
                         f"folder")
    for key, tensor in expected.items():
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise ModelError(f"{where}: {what} tensor {key} has shape {tuple(saved[key].shape)} in "
                             f"the checkpoint, {tuple(tensor.shape)} in this run; it was written "
                             f"for another model, so resume with the config that wrote it or use "
                             f"another output folder")


# --- helpers -------------------------------------------------------------------------------------

def _storable(group: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors; tensors sharing memory with an earlier one are copied."""
    out, seen = {}, set()
    for key, tensor in group.items():
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk (folders only where the OS allows opening them)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    with contextlib.suppress(OSError):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
