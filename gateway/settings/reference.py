"""The README's Configuration table and docs/configuration.md's flags table, written from the
settings' declarations.

`python -m gateway.settings --table` and `--flags-table` print them; tests/test_settings.py
fails while the README's or the doc's copy differs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.settings.declaration import Declaration

if TYPE_CHECKING:
    from gateway.settings import Settings

HEADER = "| variable | default | meaning |\n|---|---|---|\n"
FLAGS_HEADER = "| flag | commands | variable | default | meaning |\n|---|---|---|---|---|\n"
COMMANDS = ("serve", "worker")
"""The commands whose settings can have flags (`setting(flag=...)`)."""


def shown_default(value: Any, rendered: Any) -> str:
    """A default as the table shows it: `rendered` is its `to_env` text (JSON dump)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    text = "" if rendered is None else str(rendered)
    return f"`{text}`" if text and " " in text else text


def variable_cell(declaration: Declaration) -> str:
    cell = f"`{declaration.env}`"
    extra = [f"`{declaration.alias}`"] if declaration.alias else []
    extra += [f"`{declaration.option}`"] if declaration.flag else []
    return f"{cell} ({', '.join(extra)})" if extra else cell


def configuration_table(defaults: Settings, declarations: Iterable[Declaration]) -> str:
    rendered = defaults.model_dump(mode="json")
    rows = []
    for declaration in declarations:
        if declaration.internal:
            continue
        value = getattr(defaults, declaration.name)
        default = declaration.shown or shown_default(value, rendered[declaration.name])
        rows.append(f"| {variable_cell(declaration)} | {default} | {declaration.help} |\n")
    return HEADER + "".join(rows)


def flags_table(defaults: Settings, declarations: Iterable[Declaration]) -> str:
    """The settings' flags as `gateway serve`/`worker` parse them: each option is read from the
    parser `add_flags` builds, so the table shows what the command line really takes."""
    from gateway.settings.flags import add_flags  # it reads this module: import when called

    actions: dict[str, argparse.Action] = {}
    for command in COMMANDS:
        parser = argparse.ArgumentParser(add_help=False)
        add_flags(parser, command)
        actions.update((action.dest, action) for action in parser._actions)
    rendered = defaults.model_dump(mode="json")
    rows = []
    for declaration in declarations:
        if not declaration.flag:
            continue
        value = getattr(defaults, declaration.name)
        default = declaration.shown or shown_default(value, rendered[declaration.name])
        commands = ", ".join(declaration.flag)
        flag = option_cell(actions[declaration.name])
        rows.append(
            f"| {flag} | {commands} | `{declaration.env}` | {default or 'none'} "
            f"| {declaration.help} |\n"
        )
    return FLAGS_HEADER + "".join(rows)


def option_cell(action: argparse.Action) -> str:
    """`--port PORT`, `--require-auth` / `--no-require-auth`, `--handlers HANDLERS` (repeatable)."""
    if action.nargs == 0:
        return " / ".join(f"`{option}`" for option in action.option_strings)
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    cell = ", ".join(f"`{option} {metavar}`" for option in action.option_strings)
    return f"{cell} (repeatable)" if isinstance(action, argparse._AppendAction) else cell
