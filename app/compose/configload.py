"""Build frozen config dataclasses from YAML data, strictly.

Unknown keys are errors with a "did you mean"; wrong types and invalid values name the file and the key
path (`robot.safety.max_joint_delta_per_tick`). Missing keys take the dataclass defaults, so a user's
config.yaml only needs what differs. The field types this understands are the ones our configs use:
bool, int, float, str, Path, Literal[...], X | None, tuple[X, ...], tuple[X, Y], dict[str, X] and nested
dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or invalid; the message says where and why."""


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    if get_origin(tp) in (typing.Union, types.UnionType):  # int | Literal['auto'] → "int or 'auto'"
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}{did_you_mean(value, allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: a value is required here, not null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {_type_name(tp)}"
        )
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(
            _convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {
            _convert(key_tp, k, f"{where}"): _convert(val_tp, v, f"{where}.{k}") for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(
                f"{where}: expected text, got {type(value).__name__} {value!r} (quote it in YAML)"
            )
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise TypeError(f"config field {where} has a type the loader does not understand: {_type_name(tp)}")


def load_yaml(text: str, source: str) -> Any:
    """YAML text → data, refusing duplicate keys with both line numbers."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(
        loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{source}: key {key!r} is given twice (lines {seen[key]} and {line})")
            seen[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Construct dataclass `cls` from a mapping; `where` is the key path used in messages."""
    label = where or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(
                f"{path}: unknown key{did_you_mean(key, fields)}; known keys: {', '.join(fields)}"
            )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _convert(hints[name], value, path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(_dotted(str(e), where, fields)) from e


def _dotted(message: str, where: str, fields: typing.Iterable[str]) -> str:
    """A dataclass's own validation message with the full dotted key path in front. Messages start with
    a field name ("fps must be …"), with the section's own name ("server.port must be …") or with the
    whole path already ("train.steps must be …"); each becomes "policy.server.port must be …"."""
    if not where:
        return message
    last = where.rsplit(".", 1)[-1]
    if message.startswith(where + ".") or message.startswith(where + ":"):
        return message
    top = where.split(".", 1)[0]
    if message.startswith(top + ".") and "." in where:  # a path from the top, e.g. "train.data.x must"
        return message
    if message.startswith(last + "."):
        return where + message[len(last) :]
    head = message.split(" ", 1)[0].split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
    if head in set(fields):
        return f"{where}.{message}"
    return f"{where}: {message}"


def to_plain(obj: Any) -> Any:
    """A dataclass config as plain dicts/lists (for printing and for storing beside an episode)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
