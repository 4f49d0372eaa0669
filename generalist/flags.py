"""Dataclass configs to command-line flags and to JSON, nested configs included.

A field's docstring (the string literal under it, CleanRL's `Args` style) is its `--help` text. A field whose
type is itself a config dataclass nests: its fields become `--<field>.<name>` flags (`--eval.episodes`,
`--train.learning-rate`), and JSON objects inside the JSON object. Configs are saved as JSON beside what they
produced and read back with unknown keys rejected at every level, never silently dropped.

Supported leaf types: bool, int, float, str, Path, optionals of those, tuples of str and str -> float mappings
(written `a=1,b=2.5` on the command line).

This module imports nothing heavy: the CLI builds every parser from it without importing torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import math
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring: the string literal that follows its annotated assignment in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def parse_weights(text: str) -> dict[str, float]:
    """`a=1,b=2.5` to {"a": 1.0, "b": 2.5}."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=weight, got {item!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {value!r}") from error
    return weights


def _finite(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _parser_for(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return lambda text: tuple(filter(None, (part.strip() for part in text.split(","))))
    if origin in (dict, Mapping) or hint is Mapping:
        return parse_weights
    if hint is Path:
        return Path
    if hint in (int, float):
        return _finite(hint)
    if hint is str:
        return str
    raise TypeError(f"unsupported config field type {hint!r}")


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A field that may be None: the word NONE (any case) gives None, anything else is parsed as usual."""
    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def _shown(default: Any) -> Any:
    if isinstance(default, Mapping):
        return ",".join(f"{k}={v:g}" for k, v in default.items())
    if isinstance(default, tuple):
        return ",".join(default)
    return default


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any, type]]:
    """Every leaf field of a config tree: (dotted name, field, its type hint, the class that declares it)."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint, _ = _strip_optional(hints[field.name])
        if _is_config(hint):
            leaves += leaf_fields(hint, f"{prefix}{field.name}.")
        else:
            leaves.append((prefix + field.name, field, hints[field.name], cls))
    return leaves


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, base: Any = None, exclude: tuple[str, ...] = (),
    prefix: str = "", short_names: bool = True, aliases: Mapping[str, str] | None = None,
) -> None:
    """One `--flag` per leaf field of a config tree, with its docstring as help and its default shown.

    Nested fields are `--<field>.<name>` (all of them under `prefix`, e.g. "eval."); with `short_names`, a leaf
    name that occurs once in the tree may also be given bare (`--weights` for `--train.weights`). `base` gives the
    defaults shown (a preset's values); `aliases` gives more bare names, by dotted field (a bare name that occurs
    more than once but means one field first, like `--data-dir` for `--train.data-dir`). Read the flags back with
    `from_arguments(cls, args, base, prefix)`.
    """
    aliases = aliases or {}
    leaves = [(prefix + dotted, *rest) for dotted, *rest in leaf_fields(cls)]
    counts: dict[str, int] = {}
    for dotted, *_ in leaves:
        counts[dotted.rsplit(".", 1)[-1]] = counts.get(dotted.rsplit(".", 1)[-1], 0) + 1
    for dotted, field, full_hint, owner in leaves:
        if dotted in exclude:
            continue
        hint, optional = _strip_optional(full_hint)
        default = _get(base, dotted.removeprefix(prefix)) if base is not None else (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        )
        name = dotted.rsplit(".", 1)[-1]
        flags = ["--" + dotted.replace("_", "-")]
        if short_names and "." in dotted.removeprefix(prefix) and counts[name] == 1:
            flags.append("--" + name.replace("_", "-"))
        if dotted in aliases:
            flags.append("--" + aliases[dotted])
        help_text = f"{field_docs(owner).get(field.name, '')} (default: {_shown(default)})".replace("%", "%%")
        if hint is bool:
            parser.add_argument(*flags, dest=dotted, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            metavar = name.upper()
            parse = _optional(_parser_for(hint)) if optional else _parser_for(hint)
            parser.add_argument(*flags, dest=dotted, type=parse, default=None, help=help_text,
                                metavar="NONE|" + metavar if optional else metavar)


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def from_arguments(cls: type[T], args: argparse.Namespace, base: T | None = None, prefix: str = "") -> T:
    """A config (tree) from parsed flags: flags given override `base` (or the defaults)."""
    config = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    given: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init:
            continue
        hint, _ = _strip_optional(hints[field.name])
        if _is_config(hint):
            given[field.name] = from_arguments(hint, args, getattr(config, field.name), f"{prefix}{field.name}.")
        elif (value := getattr(args, prefix + field.name, None)) is not None:
            given[field.name] = value
    return dataclasses.replace(config, **given)  # type: ignore[type-var]


def to_json_dict(config: Any) -> dict[str, Any]:
    """A config (tree) as plain JSON values."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return to_json_dict(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, Mapping):
            return dict(value)
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


def from_json_dict(cls: type[T], values: Mapping[str, Any], source: str = "config") -> T:
    """A config (tree) from JSON values; an unknown key, or a value of the wrong type, is a `ValueError` naming it."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for name, value in values.items():
        hint, optional = _strip_optional(hints[name])
        _check_json_type(value, hint, optional, f"{source}: {name}")
        if value is not None and _is_config(hint):
            value = from_json_dict(hint, value, f"{source}: {name}")
        elif value is not None and hint is Path:
            value = Path(value)
        elif value is not None and typing.get_origin(hint) is tuple:
            value = tuple(value)
        converted[name] = value
    return cls(**converted)


def _check_json_type(value: Any, hint: Any, optional: bool, name: str) -> None:
    """A JSON value of the field's type ("steps": "12" is an error, not a string compared with numbers)."""
    if value is None:
        if not optional:
            raise ValueError(f"{name}: must not be null")
        return
    origin = typing.get_origin(hint)
    if _is_config(hint) or origin in (dict, Mapping) or hint is Mapping:
        valid = isinstance(value, Mapping)
    elif origin is tuple:
        valid = isinstance(value, list) and all(isinstance(item, str) for item in value)
    elif hint is bool:
        valid = isinstance(value, bool)
    elif hint is int:
        valid = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # str and Path
        valid = isinstance(value, str)
    if not valid:
        raise ValueError(f"{name}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def save_json(config: Any, path: str | Path) -> None:
    """Write a config (tree) to a JSON file."""
    Path(path).write_text(json.dumps(to_json_dict(config), indent=2) + "\n")


def load_json(cls: type[T], path: str | Path) -> T:
    """Read a config from a JSON file written by `save_json`."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise FileNotFoundError(f"config file {path} does not exist") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    return from_json_dict(cls, values, str(path))
