"""Reading settings from an environment mapping, and wording what is wrong with it.

`Settings.from_env` takes the mapping to read (the process's environment by default, a dict in
tests); `reading(environ)` lends it to `Environment`, the pydantic-settings source that
`Settings` lists after its keyword arguments, for the duration of one construction. Without it
`Settings(...)` reads no environment at all: a plain value, as tests build them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from gateway.errors import SettingsError
from gateway.settings.declaration import Declaration

_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar(
    "gateway_settings_environ", default=None
)


@contextmanager
def reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


class Environment(PydanticBaseSettingsSource):
    """Each setting's text from its variables (the winning alias first); an empty or blank
    variable counts as unset. Values stay text: the field's type parses them, and errors name
    the variable, which is the key the value is returned under."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        environ = _ENVIRON.get() or {}
        alias = field.validation_alias
        names = alias.choices if isinstance(alias, AliasChoices) else [field_name]
        for name in names:
            raw = environ.get(name) if isinstance(name, str) else None
            if isinstance(name, str) and raw is not None and raw.strip():
                return raw.strip(), name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if _ENVIRON.get() is None:
            return {}
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[key] = value
        return values


def settings_error(error: ValidationError, declared: Mapping[str, Declaration]) -> SettingsError:
    """The first problem, naming the variable (or the flag / keyword) and the bound broken."""
    problem = error.errors()[0]
    where = str(problem["loc"][0]) if problem["loc"] else ""
    by_variable = {variable: d for d in declared.values() for variable in d.variables}
    declaration = by_variable.get(where) or declared.get(where)
    if declaration is not None and where == declaration.name:  # a keyword: a CLI override
        where = f"{declaration.option} ({declaration.env})" if declaration.flag else where
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        message = (declaration.bounds() if declaration else None) or message
    return SettingsError(f"{where}={problem['input']!r}: {message}")
