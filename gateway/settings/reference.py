"""The README's Configuration table, written from the settings' declarations.

`python -m gateway.settings --table` prints it; tests/test_settings.py fails while the README's
copy differs from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.settings.declaration import Declaration

if TYPE_CHECKING:
    from gateway.settings import Settings

HEADER = "| variable | default | meaning |\n|---|---|---|\n"


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
