"""Mapping rules: a topic pattern with wildcards → a channel template, an event type and data.

Each broker spells its topics its own way (`orders.*.status` in AMQP, `orders/+/status` in
MQTT, `orders.*.status` / `orders.>` in NATS); a `Syntax` says how, so one matcher serves all.
A template names the wildcards' matches by position: `order:{1}` takes the first wildcard's
match, `{topic}` the whole topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from gateway.errors import InvalidInput, MalformedMessage
from gateway.events import validate_channel, validate_event_type


@dataclass(frozen=True, slots=True)
class Syntax:
    """How a broker separates topic words and spells its two wildcards."""

    separator: str
    one: str
    """Matches exactly one word."""
    rest: str
    """Matches the remaining words (one or more in AMQP and NATS, zero or more in MQTT)."""
    rest_may_be_empty: bool


AMQP: Final = Syntax(".", "*", "#", rest_may_be_empty=True)
MQTT: Final = Syntax("/", "+", "#", rest_may_be_empty=True)
NATS: Final = Syntax(".", "*", ">", rest_may_be_empty=False)


class TopicPattern:
    """A compiled topic filter; `match` returns the wildcards' matches, in order, or None."""

    def __init__(self, pattern: str, syntax: Syntax) -> None:
        words = pattern.split(syntax.separator)
        parts: list[str] = []
        self.wildcards = 0
        sep = re.escape(syntax.separator)
        for index, word in enumerate(words):
            last = index == len(words) - 1
            if word == syntax.one:
                parts.append(f"([^{sep}]*)")
                self.wildcards += 1
            elif word == syntax.rest:
                if not last:
                    raise ValueError(f"{syntax.rest!r} may only be the last word of {pattern!r}")
                self.wildcards += 1
                if syntax.rest_may_be_empty and parts:
                    # `a.#` matches `a` too: the separator goes with the optional rest.
                    parts[-1] += f"(?:{sep}(.*))?"
                    continue
                parts.append("(.+)" if not syntax.rest_may_be_empty else "(.*)")
            else:
                if syntax.one in word or syntax.rest in word:
                    raise ValueError(f"a wildcard must be a whole word in {pattern!r}")
                parts.append(re.escape(word))
        # Joined by separators, except a rest folded into the word before it.
        self._regex = re.compile(sep.join(parts))
        self.pattern = pattern

    def match(self, topic: str) -> tuple[str, ...] | None:
        found = self._regex.fullmatch(topic)
        if found is None:
            return None
        return tuple(group or "" for group in found.groups())


Format = Literal["json", "text"]


PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")


class Template:
    """`order:{1}`, `{topic}`: placeholders checked when the rules are loaded."""

    def __init__(self, text: str, wildcards: int) -> None:
        self.text = text
        for name in PLACEHOLDER.findall(text):
            if name == "topic":
                continue
            if not name.isdigit() or not 1 <= int(name) <= wildcards:
                raise ValueError(
                    f"{{{name}}} in {text!r}: use {{topic}} or {{1}}..{{{wildcards}}} "
                    f"(the pattern has {wildcards} wildcard(s))"
                )
        if "{" in PLACEHOLDER.sub("", text) or "}" in PLACEHOLDER.sub("", text):
            raise ValueError(f"unbalanced braces in {text!r}")

    def render(self, topic: str, matches: tuple[str, ...]) -> str:
        def value(found: re.Match[str]) -> str:
            name = found.group(1)
            return topic if name == "topic" else matches[int(name) - 1]

        return PLACEHOLDER.sub(value, self.text)


@dataclass(frozen=True, slots=True)
class Mapped:
    """The event a message becomes."""

    channel: str
    type: str
    data: Any


class Route:
    """One rule: which topics, which channel, which event type and data."""

    def __init__(
        self,
        match: str,
        channel: str,
        syntax: Syntax,
        *,
        type: str = "message",
        type_field: str | None = None,
        data_field: str | None = None,
        format: Format = "json",
    ) -> None:
        self.pattern = TopicPattern(match, syntax)
        self.channel = Template(channel, self.pattern.wildcards)
        self.type = Template(type, self.pattern.wildcards)
        self.type_field = type_field
        self.data_field = data_field
        self.format = format
        if format == "text" and (type_field or data_field):
            raise ValueError("type_field and data_field read a JSON object: format must be json")

    def map(self, topic: str, matches: tuple[str, ...], body: bytes) -> Mapped:
        """The event for a message this route matched; `MalformedMessage` if it cannot be one."""
        try:
            channel = validate_channel(self.channel.render(topic, matches))
        except InvalidInput as exc:
            raise MalformedMessage(f"topic {topic!r} makes no channel name: {exc}") from None
        data = self._decode(body)
        type_ = self.type.render(topic, matches)
        if self.type_field is not None or self.data_field is not None:
            if not isinstance(data, dict):
                raise MalformedMessage("the body is not a JSON object")
            if self.type_field is not None:
                if self.type_field not in data:
                    raise MalformedMessage(f"the body has no {self.type_field!r} field")
                type_ = data[self.type_field]
            if self.data_field is not None:
                data = data.get(self.data_field)
        try:
            validate_event_type(type_)
        except InvalidInput:
            raise MalformedMessage(f"{type_!r} is not an event type") from None
        return Mapped(channel, type_, data)

    def _decode(self, body: bytes) -> Any:
        if self.format == "text":
            try:
                return body.decode()
            except UnicodeDecodeError:
                raise MalformedMessage("the body is not UTF-8 text") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"the body is not JSON: {exc}") from None


class Routes:
    """A source's rules, tried in order: the first whose pattern matches the topic maps it."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def map(self, topic: str, body: bytes) -> Mapped:
        for route in self.routes:
            matches = route.pattern.match(topic)
            if matches is not None:
                return route.map(topic, matches, body)
        raise MalformedMessage(f"no route matches topic {topic!r}")
