"""The handler registry: input models check `data` and name the field, validator functions still
work, and the built-in handlers are loaded with any user module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import gateway
from gateway.errors import InvalidJobData
from gateway.jobs.registry import REGISTRY, HandlerRegistry, JobContext, handler


class ResizeInput(BaseModel):
    width: int = Field(256, ge=1, le=10_000)
    url: str


async def run(ctx: JobContext) -> Any:
    return ctx.data_as(ResizeInput).width


def test_an_input_model_checks_data_and_names_the_field() -> None:
    registry = HandlerRegistry()
    handler("resize", input=ResizeInput, registry=registry)(run)
    spec = registry.get("resize")
    assert spec is not None and spec.input is ResizeInput
    assert spec.check({"url": "u", "extra": 1}) == {"width": 256, "url": "u"}
    with pytest.raises(InvalidJobData) as refused:
        spec.check({"width": 0})
    assert dict(refused.value.errors) == {
        "width": "Input should be greater than or equal to 1",
        "url": "Field required",
    }
    assert "width: Input should be greater than or equal to 1" in str(refused.value)
    with pytest.raises(InvalidJobData) as not_object:
        spec.check([1])
    assert not_object.value.errors[0][0] == ""  # the whole of `data`


def test_null_data_is_an_empty_object() -> None:
    registry = HandlerRegistry()

    class Defaults(BaseModel):
        n: int = 3

    handler("d", input=Defaults, registry=registry)(run)
    spec = registry.get("d")
    assert spec is not None and spec.check(None) == {"n": 3}


def test_input_schema_is_the_models_json_schema() -> None:
    registry = HandlerRegistry()
    handler("resize", input=ResizeInput, registry=registry)(run)
    handler("free", registry=registry)(run)
    resize, free = registry.get("resize"), registry.get("free")
    assert resize is not None and free is not None
    schema = resize.input_schema()
    assert schema is not None and schema["properties"]["width"]["maximum"] == 10_000
    assert schema["required"] == ["url"]
    assert free.input_schema() is None


def test_a_validator_function_still_works() -> None:
    registry = HandlerRegistry()

    def positive(data: Any) -> Any:
        if not isinstance(data, int) or data <= 0:
            raise InvalidJobData("data must be a positive integer")
        return data * 2

    handler("double", validate=positive, registry=registry)(run)
    handler("anything", registry=registry)(run)
    double, anything = registry.get("double"), registry.get("anything")
    assert double is not None and anything is not None
    assert double.check(4) == 8
    with pytest.raises(InvalidJobData) as refused:
        double.check(-1)
    assert refused.value.errors == ()
    assert anything.check({"x": [1]}) == {"x": [1]}


async def test_data_as_gives_the_handler_its_model() -> None:
    async def report(fraction: float, message: str, extra: dict[str, Any]) -> None:
        pass

    ctx = JobContext(
        job_id="j",
        type="resize",
        data={"width": 9, "url": "u"},
        attempt=1,
        report=report,
        data_dir=Path("."),
    )
    assert await run(ctx) == 9


def test_loading_modules_registers_the_builtins() -> None:
    REGISTRY.load_modules(())
    assert {"sleep", "fail", "data_analysis"} <= set(REGISTRY.names())
    sleep = REGISTRY.get("sleep")
    assert sleep is not None and sleep.input is not None
    assert gateway.handler is handler and gateway.JobContext is JobContext
