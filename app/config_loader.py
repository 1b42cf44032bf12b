"""Typed, checked dataclasses from YAML and environment text; knows no setting of its own.

app/config.py declares the settings (and says why this is not pydantic-settings); this turns
plain data into them: `merge` layers a file's or a change's values on the defaults, refusing
unknown keys; `apply_environment` reads a variable per leaf key (`rasa.url` -> `RASA_URL`);
`build` coerces every value to its field's type and checks the limits the field declares (and a
section's `problems()`, for a rule between its fields). Every error is a ConfigError that names
the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range; the message names the key."""


def read_yaml(file: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file}: the top level must be a mapping")
    return loaded


def merge(base: dict[str, Any], override: Mapping[str, Any], prefix: str = "",
          moved: Mapping[str, str] | None = None) -> None:
    """Set `override`'s leaves in `base` (nested dicts), refusing keys `base` does not have;
    `moved`: old dotted key -> new one, named in the refusal."""
    for key, value in override.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in base:
            hint = f" (it is now {moved[dotted]})" if moved and dotted in moved else ""
            raise ConfigError(f"{dotted}: unknown setting{hint}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted}: must be a mapping of settings")
            merge(base[key], value, dotted, moved)
        else:
            base[key] = value


def leaf_paths(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Environment variable name -> dotted key, for every leaf of `data`."""
    names: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            names.update(leaf_paths(value, dotted))
        else:
            names[dotted.replace(".", "_").upper()] = dotted
    return names


def apply_environment(data: dict[str, Any], environ: Mapping[str, str],
                      aliases: Mapping[str, str]) -> None:
    """Each leaf's variable (or an alias: name -> dotted key) replaces its value; the path name
    wins over an alias."""
    names = {**aliases, **leaf_paths(data)}
    for name, dotted in names.items():
        if name not in environ:
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = _parse_env_value(environ[name], node[leaf], name)


def _parse_env_value(raw: str, current: Any, name: str) -> Any:
    if isinstance(current, (list, tuple)):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(current, bool):
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    return raw


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from plain `data`, every field coerced and checked."""
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        values[f.name] = _coerce(hints[f.name], data[f.name], dotted)
    instance = cls(**values)
    # A rule between a section's fields: its `problems()`, field name -> what is wrong.
    for name, problem in getattr(instance, "problems", dict)().items():
        raise ConfigError(f"{prefix}.{name}: {problem}" if prefix else f"{name}: {problem}")
    return instance


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """`value` as the type `hint` says, within the limits it declares; else ConfigError."""
    if typing.get_origin(hint) is Annotated:
        value = _coerce(hint.__origin__, value, key)
        for limit in hint.__metadata__:
            problem = limit.problem(value)
            if problem is not None:
                raise ConfigError(f"{key}: {problem}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            choices = ", ".join(map(str, allowed))
            raise ConfigError(f"{key}: must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be a list")
        return tuple(str(item) for item in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: must be a whole number, got {value!r}")
        return number
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: must be text, got {type(value).__name__}")
        return str(value)
    if isinstance(hint, types.UnionType):  # pragma: no cover - no optional settings today
        return value
    raise TypeError(f"unsupported setting type {hint!r} for {key}")
