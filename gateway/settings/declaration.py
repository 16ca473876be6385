"""`setting(...)`: the one declaration of a setting, and `Declaration`, what is read back from it.

A setting's variable, aliases, bounds, help, flags and shown default live in its pydantic
`Field`; the environment reader, the CLI flags, `to_env` and the README table all read them
from there (`declarations`), so a setting is added or changed in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import annotated_types
from pydantic import AliasChoices, BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def setting(
    default: Any = PydanticUndefined,
    *,
    env: str,
    help: str,
    ge: float | None = None,
    le: float | None = None,
    alias: str | None = None,
    flag: tuple[str, ...] = (),
    shown: str | None = None,
    internal: bool = False,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare a setting read from the variable `env`.

    `alias`: another variable that wins over `env` when both are set. `flag`: the commands
    (`serve`, `worker`) with a `--name` option overriding it. `shown`: the default as the
    README words it, when the value alone would not say it. `internal`: set by the gateway
    for its own child processes, not listed in the README.
    """
    extra: dict[str, Any] = {"env": env, "flag": list(flag), "internal": internal}
    if alias:
        extra["alias"] = alias
    if shown is not None:
        extra["shown"] = shown
    choices = AliasChoices(alias, env) if alias else AliasChoices(env)
    if default_factory is not None:
        return Field(
            default_factory=default_factory,
            description=help,
            validation_alias=choices,
            json_schema_extra=extra,
        )
    return Field(
        default, ge=ge, le=le, description=help, validation_alias=choices, json_schema_extra=extra
    )


@dataclass(frozen=True, slots=True)
class Declaration:
    """One setting as declared: what the readers, the flags and the reference need."""

    name: str
    """The attribute of `Settings`."""
    env: str
    alias: str | None
    help: str
    ge: float | None
    le: float | None
    flag: tuple[str, ...]
    shown: str | None
    internal: bool

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables read, the winning one first."""
        return (self.alias, self.env) if self.alias else (self.env,)

    @property
    def option(self) -> str:
        """The CLI option (for the commands in `flag`)."""
        return "--" + self.name.replace("_", "-")

    def bounds(self) -> str | None:
        if self.ge is None and self.le is None:
            return None
        if self.le is None:
            return f"must be at least {self.ge:g}"
        if self.ge is None:
            return f"must be at most {self.le:g}"
        return f"must be between {self.ge:g} and {self.le:g}"


def _number(bound: object) -> float:
    assert isinstance(bound, int | float)
    return float(bound)


def _declaration(name: str, field: FieldInfo) -> Declaration:
    extra = field.json_schema_extra
    assert isinstance(extra, dict), f"{name} is not declared with setting()"
    ge = next((_number(m.ge) for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    le = next((_number(m.le) for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    alias, shown, flag = extra.get("alias"), extra.get("shown"), extra.get("flag")
    return Declaration(
        name=name,
        env=str(extra["env"]),
        alias=alias if isinstance(alias, str) else None,
        help=field.description or "",
        ge=ge,
        le=le,
        flag=tuple(str(command) for command in flag) if isinstance(flag, list) else (),
        shown=shown if isinstance(shown, str) else None,
        internal=bool(extra.get("internal")),
    )


def declarations(model: type[BaseModel]) -> Iterator[Declaration]:
    """Every setting of `model`, in declaration order."""
    for name, field in model.model_fields.items():
        yield _declaration(name, field)
