"""The `gateway serve` / `gateway worker` options that override settings, from the declarations.

A setting declared with `flag=("serve",)` gets `--name` on `gateway serve`; its value goes to
`Settings.from_env` as an override (text, parsed like the variable), so a flag and its variable
accept the same values and fail with the same message. On/off settings get `--name` and
`--no-name`; list settings may be repeated.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from gateway.settings import Settings, declared
from gateway.settings.reference import shown_default


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the options of `command`'s settings to its parser."""
    defaults = Settings()
    rendered = defaults.model_dump(mode="json")
    for declaration in declared().values():
        if command not in declaration.flag:
            continue
        field = Settings.model_fields[declaration.name]
        default = declaration.shown or shown_default(
            getattr(defaults, declaration.name), rendered[declaration.name]
        )
        help = f"{declaration.help} ({declaration.env}; default: {default or 'none'})"
        help = help.replace("%", "%%")
        if _is_on_off(field.annotation):
            parser.add_argument(
                declaration.option,
                dest=declaration.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help,
            )
        elif isinstance(getattr(defaults, declaration.name), tuple):
            parser.add_argument(
                declaration.option, dest=declaration.name, action="append", help=help
            )
        else:
            parser.add_argument(declaration.option, dest=declaration.name, default=None, help=help)


def _is_on_off(annotation: Any) -> bool:
    """`bool`, `Flag` (an annotated bool), or either or None."""
    if annotation is bool:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_on_off(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_on_off(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    return False


def overrides(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The settings given as flags of `command` (`None` where a flag was not given)."""
    return {d.name: getattr(args, d.name, None) for d in declared().values() if command in d.flag}
