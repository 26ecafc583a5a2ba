"""Base class for every saved model part: ``config.json`` + ``diffusion_pytorch_model.safetensors``.

Follows diffusers' conventions (``ModelMixin``, ``ConfigMixin``, ``@register_to_config``): every
constructor argument lands in ``config.json``. Loading rebuilds the module from its config and loads
the weights with ``strict=True``; nothing is ever unpickled.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from diffusers import ConfigMixin, ModelMixin
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from mambacontrol.errors import ModelError
from mambacontrol.io.atomic import replace_dir
from mambacontrol.io.limits import check_limit

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

T = TypeVar("T", bound="Component")


class Component(ModelMixin, ConfigMixin):
    """A model part that saves and loads itself (subclasses decorate ``__init__`` with
    ``@register_to_config``)."""

    config_name = CONFIG_NAME
    legacy_defaults: ClassVar[dict[str, Any]] = {}
    """Setting -> the value models saved before the setting existed had (their config lacks it;
    the ``__init__`` default is what new models get)."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config and weights into ``directory``, atomically (temporary folder + rename)."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.save_pretrained(tmp, safe_serialization=True)
            replace_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return target

    @classmethod
    def load(cls: type[T], directory: str | os.PathLike, device: str | torch.device = "cpu") -> T:
        """Rebuild from ``directory`` and load weights strictly.

        Raises:
            ModelError: naming the folder and the problem (missing files, another class, corrupt
                weights, missing or unexpected tensors).
        """
        folder = Path(directory)
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise ModelError(f"{folder}: not a saved {cls.__name__} (needs {CONFIG_NAME} and "
                             f"{WEIGHTS_NAME}); point to a component folder of a trained model")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{cfg_path}: corrupt config ({exc}); re-save the model") from None
        if not isinstance(config, dict):
            raise ModelError(f"{cfg_path}: corrupt config (not a JSON object); re-save the model")
        if config.get("_class_name") != cls.__name__:
            raise ModelError(f"{folder}: holds a {config.get('_class_name')}, not a {cls.__name__}")
        config = {**cls.legacy_defaults, **config}
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in accepted)
        if unknown:
            raise ModelError(f"{cfg_path}: unknown setting(s) {', '.join(unknown)} for "
                             f"{cls.__name__}; the model was saved by another version of "
                             "mambacontrol")
        # The config is first built on the meta device (no memory), so that a config asking for
        # huge layers is refused, and checked against the weights file's header, before anything
        # is allocated.
        try:
            with torch.device("meta"):
                skeleton = cls.from_config(config)
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, RuntimeError,
                OverflowError) as exc:
            raise ModelError(f"{cfg_path}: config does not build a {cls.__name__} "
                             f"({exc})") from None
        expected = skeleton.state_dict()
        check_limit("max_model_parameters", sum(t.numel() for t in expected.values()),
                    f"{cfg_path}: the config builds a {cls.__name__} with that many parameters")
        stored = _stored_shapes(w_path)
        missing = [k for k in expected if k not in stored]
        unexpected = [k for k in stored if k not in expected]
        if missing or unexpected:
            raise ModelError(f"{folder}: weights do not match the config (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); the folder mixes two models")
        for name, tensor in expected.items():
            if tuple(tensor.shape) != stored[name]:
                raise ModelError(f"{folder}: tensor {name} has shape {stored[name]}, the config "
                                 f"expects {tuple(tensor.shape)}; the folder mixes two models")
        del skeleton
        model = cls.from_config(config)
        try:
            state = load_file(str(w_path), device=str(device))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelError(f"{w_path}: corrupt weights ({exc}); re-save the model") from None
        _check_values(w_path, state, expected)
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape, from a safetensors file's header only."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelError(f"{path}: corrupt weights ({exc}); re-save the model") from None


def _check_values(path: Path, state: dict[str, torch.Tensor],
                  expected: dict[str, torch.Tensor]) -> None:
    """Refuse weights whose floating-point tensors are stored as another kind, or hold NaN/±∞."""
    for name, ref in expected.items():
        tensor = state[name]
        if ref.dtype.is_floating_point and not tensor.dtype.is_floating_point:
            raise ModelError(f"{path}: tensor {name} is stored as {tensor.dtype}, not floating "
                             "point; the file was not written by mambacontrol: re-save the model")
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{path}: tensor {name} holds NaN or infinite values; the model is "
                             "corrupt or diverged in training: retrain it or use another model")
