"""Strict YAML configs for nested dataclasses: load, override, dump, compare.

A config schema is a (nested) dataclass whose fields are typed with ``int``, ``float``, ``bool``,
``str``, ``pathlib.Path``, ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``dict[str, T]``,
``T | None``, ``Literal[...]`` (a fixed set of choices), ``Any`` or another dataclass. Everything
the YAML file or an override says is checked against that schema:

- an unknown key raises :class:`~mambacontrol.errors.ConfigError` naming its full dotted key
  (``unet.train.lrr``) and listing the valid keys at that level;
- a wrong type raises ``ConfigError`` naming the key, the value and the expected type;
- a field without a default that the file leaves out raises ``ConfigError`` naming the key.

Values follow YAML 1.2's rules (only ``true`` and ``false`` are booleans: ``no`` and ``off`` are
words, not YAML 1.1's ``False``), with one kindness: a ``float`` field accepts a string that Python
reads as a float, because PyYAML reads ``1e-4`` (no dot) as a string. An ``int`` is accepted where a
``float`` is expected; a ``bool`` is never accepted as a number.

A section that is a component's keyword arguments is made from the component's signature
(:func:`signature_fields`, so its defaults are the component's) and turned back into arguments
with :func:`arguments_for`.

Overrides are ``dotted.key=value`` strings; the value is parsed as YAML (``a.b=3``,
``a.c=[1, 2]``, ``a.d=null``, ``a.e=cosine``) and replaces the file's value before checking.

Example::

    @dataclass
    class Train:
        lr: float = 1e-4
        steps: int = 1000

    @dataclass
    class Run:
        seed: int = 0
        train: Train = field(default_factory=Train)

    cfg = load_config(Run, "run.yaml", overrides=["train.lr=3e-4"])
    text = dump_config(cfg)                      # the resolved config, YAML
    assert load_config(Run, text=text) == cfg    # round trip
    config_differences(saved, cfg)               # ["train.lr: 0.0001 -> 0.0003"]
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import math
import operator
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from mambacontrol.errors import ConfigError

T = TypeVar("T")

_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


class _ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only ``true``/``false`` are booleans, so ``no``, ``off``,
    ``yes`` and ``on`` stay words (``engine.mixed_precision=no`` means the choice ``"no"``, not
    ``False``, as PyYAML's YAML 1.1 rules would read it)."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: builds plain data only


def load_config(cls: type[T], path: str | os.PathLike | None = None, *,
                overrides: Sequence[str] = (), text: str | None = None) -> T:
    """Read a YAML config (a file or a string), apply overrides and build the dataclass ``cls``.

    Args:
        cls: the schema, a dataclass type (fields may be dataclasses themselves).
        path: YAML file; ``None`` (with ``text`` also ``None``) starts from the defaults.
        overrides: ``dotted.key=value`` strings, applied in order after the file.
        text: YAML text to read instead of a file.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: naming the file, the dotted key and the problem.
    """
    if path is not None and text is not None:
        raise ValueError("give either path or text, not both")
    source = str(path) if path is not None else "config"
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{file}: config file not found; pass an existing YAML file")
        text = file.read_text(encoding="utf-8")
    raw = _parse_yaml(text or "", source)
    for item in overrides:
        _apply_override(cls, raw, item)
    return config_from_dict(cls, raw, source=source)


def config_from_dict(cls: type[T], data: Mapping[str, Any] | None, *, source: str = "config") -> T:
    """Build the dataclass ``cls`` from a nested mapping, checking keys and types strictly.

    Raises:
        ConfigError: ``"<source>: <dotted key>: <problem>"``.
    """
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"{cls!r} is not a dataclass type")
    return _build_dataclass(cls, {} if data is None else data, "", source)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The nested dict of plain YAML/JSON values (tuples become lists, paths strings)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"{config!r} is not a dataclass instance")
    return _plain(config)


def dump_config(config: Any) -> str:
    """The config as YAML text, keys in schema order; :func:`load_config` reads it back equal."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)


def config_differences(old: Any, new: Any) -> list[str]:
    """Dotted keys whose values differ, as ``"key: old -> new"`` lines (empty when equal).

    Both arguments may be dataclass instances or nested mappings (e.g. a saved config read back).
    A key present on one side only shows ``<absent>`` on the other.
    """
    a = _plain(old) if dataclasses.is_dataclass(old) else old
    b = _plain(new) if dataclasses.is_dataclass(new) else new
    out: list[str] = []
    _diff(a, b, "", out)
    return out


def require_same_config(saved: Any, current: Any, what: str) -> None:
    """Raise when ``current`` differs from the config ``what`` was started with.

    Args:
        saved: the config recorded earlier (dataclass or nested mapping).
        current: the config of this run.
        what: names the earlier run in the message, e.g. ``"run directory runs/x"``.

    Raises:
        ConfigError: listing every differing dotted key with both values.
    """
    diffs = config_differences(saved, current)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ConfigError(f"{what} was started with another config ({shown}); resume with the "
                          f"same config, or start a new run in another output folder")


# --- sections that are a callable's keyword arguments --------------------------------------------

def signature_fields(fn: Callable, names: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """Schema fields, for :func:`dataclasses.make_dataclass`, that are keyword arguments of ``fn``.

    Each field's name, type and default are the argument's own, so a config section made of them
    re-declares nothing: the defaults live in ``fn``'s signature alone. A ``Sequence[T]`` argument
    becomes a ``list[T]`` field (what YAML holds) and a tuple default a list default.

    Args:
        fn: a class (its ``__init__``) or a function, with type annotations.
        names: the arguments the config may set, in the order the YAML lists them.

    Raises:
        ValueError: a name that is not an argument of ``fn``.
    """
    params = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    fields = []
    for name in names:
        if name not in params:
            raise ValueError(f"{name!r} is not an argument of {fn.__qualname__}")
        default = params[name].default
        if default is inspect.Parameter.empty:
            spec = dataclasses.field()
        elif isinstance(default, (list, tuple)):
            spec = dataclasses.field(default_factory=functools.partial(list, default))
        else:
            spec = dataclasses.field(default=default)
        fields.append((name, _yaml_type(hints[name]), spec))
    return fields


def arguments_for(fn: Callable, section: Any) -> dict[str, Any]:
    """The fields of the dataclass ``section`` that are keyword arguments of ``fn`` (copies, in
    field order): ``fn(**arguments_for(fn, section), **derived)``."""
    params = inspect.signature(fn).parameters
    return {f.name: copy.deepcopy(getattr(section, f.name))
            for f in dataclasses.fields(section) if f.name in params}


def _yaml_type(tp: Any) -> Any:
    """``tp`` with every ``Sequence[T]`` read as ``list[T]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Sequence:
        return list[_yaml_type(args[0])] if args else list
    if origin is Union or origin is types.UnionType:
        return functools.reduce(operator.or_, [_yaml_type(a) for a in args])
    return tp


# --- parsing -------------------------------------------------------------------------------------

def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where} ({problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values, "
                          f"got {type(data).__name__}")
    return data


def _apply_override(cls: type, raw: dict[str, Any], item: str) -> None:
    key, sep, value_text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. train.lr=1e-4")
    parts = key.split(".")
    _check_override_path(cls, parts, item)
    try:
        value = _load_yaml(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value {value_text!r} is not valid YAML; "
                          f"quote it or fix the brackets") from None
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None:
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} holds "
                                  f"{child!r}, not a mapping")
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _check_override_path(cls: type, parts: list[str], item: str) -> None:
    """Walk the schema along the override's key so a typo is reported as an override error."""
    tp: Any = cls
    for depth, part in enumerate(parts):
        tp = _strip_optional(tp)
        prefix = ".".join(parts[:depth])
        if dataclasses.is_dataclass(tp):
            hints = _field_types(tp)
            if part not in hints:
                raise ConfigError(f"override {item!r}: {_unknown_key_text(prefix, part, hints)}")
            tp = hints[part]
        elif typing.get_origin(tp) in (dict, Mapping):
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        elif tp is Any or tp is dict:
            return
        else:
            raise ConfigError(f"override {item!r}: {prefix} is a {_type_name(tp)}, "
                              f"it has no key {part!r}")


# --- building and checking -----------------------------------------------------------------------

def _build_dataclass(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix or '<top level>'}: expected a mapping of "
                          f"{', '.join(_field_types(cls))}, got {data!r} ({type(data).__name__})")
    hints = _field_types(cls)
    for key in data:
        if key not in hints:
            raise ConfigError(f"{source}: {_unknown_key_text(prefix, str(key), hints)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _check_value(hints[f.name], data[f.name], dotted, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing key {dotted!r} ({_type_name(hints[f.name])}); "
                              f"add it to the config")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {prefix or '<top level>'}: {exc}") from None


def _check_value(tp: Any, value: Any, key: str, source: str) -> Any:
    """``value`` checked against (and converted to) the schema type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        return _check_union(tp, value, key, source)
    if value is None:
        raise _wrong_type(tp, value, key, source)
    if origin is Literal:
        return _check_choice(tp, value, key, source)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key, source)
    if tp in _SCALARS:
        return _check_scalar(tp, value, key, source)
    if tp in (list, tuple) or origin in (list, tuple, Sequence):
        return _check_sequence(tp, value, key, source)
    if tp is dict or origin in (dict, Mapping):
        return _check_mapping(tp, value, key, source)
    raise ValueError(f"{key}: the config schema uses an unsupported type {tp!r}")


def _wrong_type(tp: Any, value: Any, key: str, source: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r} "
                       f"({type(value).__name__}); fix the value")


def _check_union(tp: Any, value: Any, key: str, source: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:          # a plain Optional[T]: the inner message is the precise one
        return _check_value(options[0], value, key, source)
    for option in options:
        try:
            return _check_value(option, value, key, source)
        except ConfigError:
            continue
    raise _wrong_type(tp, value, key, source)


def _check_choice(tp: Any, value: Any, key: str, source: str) -> Any:
    args = typing.get_args(tp)
    if not any(value == a and type(value) is type(a) for a in args):
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{source}: {key}: {value!r} is not one of {choices}; pick one of them")
    return value


_SCALARS = {bool: (bool,), int: (int,), float: (int, float), str: (str,), Path: (str, Path)}
"""Each scalar schema type and the YAML value types it accepts (a bool only where a bool is
expected)."""


def _check_scalar(tp: type, value: Any, key: str, source: str) -> Any:
    if tp is float and isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)  # PyYAML reads 1e-4 (no dot) as a string
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, _SCALARS[tp]):
        raise _wrong_type(tp, value, key, source)
    return tp(value) if tp in (float, Path) else value


def _check_sequence(tp: Any, value: Any, key: str, source: str) -> list | tuple:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _wrong_type(tp, value, key, source)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(f"{source}: {key}: expected {len(args)} values "
                              f"({_type_name(tp)}), got {len(value)}: {value!r}")
        items = [_check_value(a, v, f"{key}[{i}]", source)
                 for i, (a, v) in enumerate(zip(args, value))]
    else:
        item_tp = args[0] if args else Any
        items = [_check_value(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return tuple(items) if (tp is tuple or origin is tuple) else items


def _check_mapping(tp: Any, value: Any, key: str, source: str) -> dict:
    if not isinstance(value, Mapping):
        raise _wrong_type(tp, value, key, source)
    args = typing.get_args(tp)
    key_tp, val_tp = args if len(args) == 2 else (Any, Any)
    return {_check_value(key_tp, k, f"{key}.{k}", source):
            _check_value(val_tp, v, f"{key}.{k}", source) for k, v in value.items()}


# --- helpers -------------------------------------------------------------------------------------

def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _unknown_key_text(prefix: str, key: str, hints: Mapping[str, Any]) -> str:
    dotted = f"{prefix}.{key}" if prefix else key
    level = f"at {prefix!r}" if prefix else "at the top level"
    close = difflib.get_close_matches(key, list(hints), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {dotted!r}{hint}; valid keys {level}: {', '.join(hints)}"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _diff(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in list(a) + [k for k in b if k not in a]:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            _diff(a.get(key, _ABSENT), b.get(key, _ABSENT), dotted, out)
    elif not _same(a, b):
        out.append(f"{prefix or '<config>'}: {_show(a)} -> {_show(b)}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return a == b


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, _Absent) else yaml.safe_dump(
        value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
