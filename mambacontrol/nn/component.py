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
from typing import TypeVar

import torch
from diffusers import ConfigMixin, ModelMixin
from safetensors import SafetensorError
from safetensors.torch import load_file

from mambacontrol.errors import ModelError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

T = TypeVar("T", bound="Component")


class Component(ModelMixin, ConfigMixin):
    """A model part that saves and loads itself (subclasses decorate ``__init__`` with
    ``@register_to_config``)."""

    config_name = CONFIG_NAME

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config and weights into ``directory``, atomically (temporary folder + rename)."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.save_pretrained(tmp, safe_serialization=True)
            if target.exists():
                old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old)
            else:
                os.replace(tmp, target)
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
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{cfg_path}: corrupt config ({exc}); re-save the model") from None
        if config.get("_class_name") != cls.__name__:
            raise ModelError(f"{folder}: holds a {config.get('_class_name')}, not a {cls.__name__}")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in accepted)
        if unknown:
            raise ModelError(f"{cfg_path}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
                             "the model was saved by another version of mambacontrol")
        try:
            model = cls.from_config(config)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{cfg_path}: config does not build a {cls.__name__} ({exc})") from None
        try:
            state = load_file(str(w_path), device=str(device))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelError(f"{w_path}: corrupt weights ({exc}); re-save the model") from None
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise ModelError(f"{folder}: weights do not match the config (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); the folder mixes two models")
        for name, tensor in expected.items():
            if tensor.shape != state[name].shape:
                raise ModelError(f"{folder}: tensor {name} has shape {tuple(state[name].shape)}, "
                                 f"the config expects {tuple(tensor.shape)}; the folder mixes two models")
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()
