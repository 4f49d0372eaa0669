"""Typed configs as the one source of truth: dataclass fields become command-line flags, and JSON files.

A field's docstring (the string literal under it, CleanRL's `Args` style) is its `--help` text. Configs are
saved as JSON beside what they produced, and read back with unknown keys rejected, never silently dropped.
Supported field types: bool, int, float, str, Path, optionals of those, tuples of str and str -> float mappings
(written `a=1,b=2.5` on the command line).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import textwrap
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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


def _parser_for(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return lambda text: tuple(filter(None, (part.strip() for part in text.split(","))))
    if origin in (dict, Mapping) or hint is Mapping:
        return parse_weights
    if hint is Path:
        return Path
    if hint in (int, float, str):
        return hint
    raise TypeError(f"unsupported config field type {hint!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One `--flag` per field of a dataclass, with its docstring as help and its default shown."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.init:
            continue
        hint, optional = _strip_optional(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        flag = "--" + field.name.replace("_", "-")
        help_text = docs.get(field.name, "")
        shown = ",".join(f"{k}={v:g}" for k, v in default.items()) if isinstance(default, Mapping) else default
        if isinstance(default, tuple):
            shown = ",".join(default)
        help_text = f"{help_text} (default: {shown})".replace("%", "%%")
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_parser_for(hint), default=None, help=help_text,
                                metavar="NONE|" + field.name.upper() if optional else field.name.upper())


def from_arguments(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """A config from parsed flags: flags given override `base` (or the defaults)."""
    config = base if base is not None else cls()
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(config, **given)  # type: ignore[type-var]


def to_json_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON values."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, Mapping):
            return dict(value)
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def from_json_dict(cls: type[T], values: Mapping[str, Any], source: str = "config") -> T:
    """A config from JSON values; an unknown key is a `ValueError` naming it."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for name, value in values.items():
        hint, _ = _strip_optional(hints[name])
        if value is not None and hint is Path:
            value = Path(value)
        elif value is not None and typing.get_origin(hint) is tuple:
            value = tuple(value)
        converted[name] = value
    return cls(**converted)


def save_json(config: Any, path: str | Path) -> None:
    """Write a config to a JSON file."""
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
