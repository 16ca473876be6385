"""The handler registry, and the API handlers use to report progress.

A handler is `async def handler(ctx: JobContext) -> result`. It reads `ctx.data`, reports with
`await ctx.progress(fraction, message)`, and returns a JSON-serialisable result; raising makes
the job retry (per its policy) and then fail. User handlers live in any module loaded with
`gateway worker --handlers my.module`:

    from pydantic import BaseModel, Field
    from gateway import JobContext, handler

    class ResizeInput(BaseModel):
        width: int = Field(gt=0, le=10_000)

    @handler("resize", input=ResizeInput, timeout=60, max_attempts=5)
    async def resize(ctx: JobContext) -> dict:
        size = ctx.data_as(ResizeInput)
        await ctx.progress(0.5, "halfway")
        return {"ok": size.width}

The `input` model is the job type's one description of its `data`: submissions are checked
against it before the job is queued (a 422 naming the field), and `GET /job-types` and
`/openapi.json` show its JSON Schema. A `validate=` function still works for handlers without
a model. The built-in handlers live in `gateway.jobs.builtin`.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidJobData

ProgressReporter = Callable[[float, str, dict[str, Any]], Awaitable[None]]
Validator = Callable[[Any], Any]
InputModel = TypeVar("InputModel", bound=BaseModel)

BUILTIN_MODULE: Final = "gateway.jobs.builtin"
"""Loaded before the user's handler modules, so `sleep`, `fail` and `data_analysis` exist."""


class JobContext:
    """What a running handler sees of its job."""

    def __init__(
        self,
        *,
        job_id: str,
        type: str,
        data: Any,
        attempt: int,
        report: ProgressReporter,
        data_dir: Path,
    ) -> None:
        self.job_id = job_id
        self.type = type
        self.data = data
        self.attempt = attempt
        self.data_dir = data_dir
        self.cancelled = asyncio.Event()
        """Set when the job's owner asked to cancel it; a handler may stop early when it sees it."""
        self._report = report

    def data_as(self, model: type[InputModel]) -> InputModel:
        """`data` as the handler's input model (it was checked against it at submission)."""
        return model.model_validate(self.data)

    async def progress(self, fraction: float, message: str = "", **extra: Any) -> None:
        """Report progress (0.0-1.0) as a `job.progress` event."""
        await self._report(min(max(float(fraction), 0.0), 1.0), message, extra)


HandlerFn = Callable[[JobContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits up to min(cap, base * 2**(n-1))."""

    max_attempts: int | None = None
    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, rand: float) -> float:
        return rand * min(self.cap, self.base * 2.0 ** max(attempt - 1, 0))


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    fn: HandlerFn
    description: str = ""
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    validate: Validator | None = None
    example: Any = None
    input: type[BaseModel] | None = None
    """The model `data` must fit; `None` data counts as `{}` so every field may default."""

    def check(self, data: Any) -> Any:
        """`data` as the job will store it, or `InvalidJobData` (with `errors` per field)."""
        if self.input is not None:
            try:
                model = self.input.model_validate({} if data is None else data)
            except ValidationError as exc:
                errors = field_errors(exc)
                raise InvalidJobData(
                    "; ".join(f"{loc or 'data'}: {msg}" for loc, msg in errors), errors
                ) from None
            return model.model_dump(mode="json")
        if self.validate is None:
            return data
        return self.validate(data)

    def input_schema(self, ref_template: str = "#/$defs/{model}") -> dict[str, Any] | None:
        """The JSON Schema of `data`, when the handler declared an input model."""
        if self.input is None:
            return None
        return self.input.model_json_schema(ref_template=ref_template)


def field_errors(exc: ValidationError) -> tuple[tuple[str, str], ...]:
    """Each error of `exc` as (dotted location, message): `("steps", "Input should be ...")`.

    A model validator's `ValueError` is its message alone, without pydantic's "Value error, ".
    """
    found = []
    for error in exc.errors(include_url=False):
        message = error["msg"]
        if error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", message))
        found.append((".".join(str(part) for part in error["loc"]), message))
    return tuple(found)


class HandlerRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def register(self, spec: HandlerSpec) -> None:
        self._specs[spec.name] = spec

    def get(self, name: str) -> HandlerSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[HandlerSpec]:
        return [self._specs[name] for name in self.names()]

    def load_modules(self, modules: tuple[str, ...]) -> None:
        """Import the built-in handlers and user modules; their `@handler` decorators register
        into `REGISTRY`.

        Modules are found in the working directory too, as `python -m` would: the `gateway`
        console script's own `sys.path` starts with its bin directory, not the project.
        """
        if modules and os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        for module in (BUILTIN_MODULE, *modules):
            importlib.import_module(module)


REGISTRY = HandlerRegistry()


def handler(
    name: str,
    *,
    input: type[BaseModel] | None = None,
    description: str = "",
    timeout: float | None = None,
    max_attempts: int | None = None,
    backoff_base: float = 1.0,
    backoff_cap: float = 60.0,
    validate: Validator | None = None,
    example: Any = None,
    registry: HandlerRegistry | None = None,
) -> Callable[[HandlerFn], HandlerFn]:
    """Register an async handler for job type `name`, its `data` described by `input` (a
    pydantic model; when given, `validate` is not used)."""

    def decorate(fn: HandlerFn) -> HandlerFn:
        (registry or REGISTRY).register(
            HandlerSpec(
                name=name,
                fn=fn,
                description=description or (fn.__doc__ or "").strip().split("\n")[0],
                timeout=timeout,
                retry=RetryPolicy(max_attempts, backoff_base, backoff_cap),
                validate=validate,
                example=example,
                input=input,
            )
        )
        return fn

    return decorate
