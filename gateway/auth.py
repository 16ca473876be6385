"""Who may call the server API, and who may subscribe to and publish on which channel.

Two kinds of credentials. **API keys** are for server-side callers (submitting jobs, publishing
from services, minting tokens): long-lived, compared in constant time. **Channel tokens**
(`gateway.tokens`) are for browsers and scripts: short-lived, scoped to channels and rights.

Namespaces carry policy. Each namespace has a rule for subscribing and one for publishing from a
client (the server API with an API key may publish on any known namespace):

- `open`: anyone;
- `token`: a token that grants the right on the channel (exactly or by `namespace:*`);
- `subject`: a token whose `sub` is the channel's name (`user:42` needs `sub` 42);
- `none`: never from a client (`job:` channels are written only by workers and the server API).

Unknown namespaces are refused, so a typo does not silently create a channel nobody reads. In
dev mode (no API keys and no token secret configured) every `token`/`subject` rule is open, so
a local `gateway serve` works with curl and the dashboard without any credentials.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable, Mapping
from typing import Final

from starlette.datastructures import Headers, QueryParams
from starlette.requests import cookie_parser
from starlette.types import Scope

from gateway.errors import Forbidden, InvalidChannel, InvalidToken
from gateway.events import namespace_of, validate_channel
from gateway.settings import Settings
from gateway.tokens import ChannelToken, TokenSigner

OPEN: Final = "open"
TOKEN: Final = "token"
SUBJECT: Final = "subject"
NONE: Final = "none"

DEFAULT_RULES: Final[Mapping[str, tuple[str, str]]] = {
    "job": (TOKEN, NONE),
    "room": (TOKEN, TOKEN),
    "user": (SUBJECT, TOKEN),
    "system": (TOKEN, NONE),  # `system:occupancy` (gateway.presence): written by the gateway
}
"""`namespace: (subscribe rule, client publish rule)`; `GATEWAY_CHANNEL_POLICY` overrides."""

TOKEN_COOKIE: Final = "gateway_token"
COOKIE_TRUSTED: Final = "gateway.cookie_trusted"
"""Scope key the access guard sets when the request's origin may use the token cookie: no
`Origin` (not a cross-origin browser request), the gateway's own origin, or one listed in
`GATEWAY_ALLOWED_ORIGINS` (never by `*`). Without it the cookie is ignored: a browser sends it
along with requests that other sites' pages make."""


class ApiKeys:
    """The configured server API keys; none configured means the API is open (dev mode)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(key.encode() for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def match(self, candidate: str | None) -> str | None:
        """The matching key (as the rate-limit identity), or None.

        Every key is compared, in constant time, so timing tells nothing about which key or how
        much of it matched.
        """
        if not candidate or not self._keys:
            return None
        given = candidate.encode("utf-8", "replace")
        found: bytes | None = None
        for key in self._keys:
            if hmac.compare_digest(given, key):
                found = key
        return found.decode() if found is not None else None


class ChannelPolicy:
    """Namespace rules plus the signer that verifies the tokens those rules ask for."""

    def __init__(
        self,
        rules: Mapping[str, tuple[str, str]] | None = None,
        *,
        signer: TokenSigner | None = None,
        open_mode: bool = True,
        revoked: Callable[[str | None], bool] | None = None,
        personal_channel: str = "",
    ) -> None:
        self.personal_channel = personal_channel
        """`GATEWAY_PERSONAL_CHANNEL`: `user:{sub}` subscribes every token's connections to
        its subject's channel; empty for none."""
        self.rules = dict(DEFAULT_RULES if rules is None else rules)
        self.signer = signer or TokenSigner.ephemeral()
        self.open_mode = open_mode
        self.revoked = revoked or _none_revoked
        """Whether a token id was revoked: the control bus's local list, no I/O."""

    @classmethod
    def from_settings(
        cls, settings: Settings, revoked: Callable[[str | None], bool] | None = None
    ) -> ChannelPolicy:
        lifetime = settings.max_token_ttl
        if settings.secrets:
            signer = TokenSigner(settings.secrets, max_lifetime=lifetime)
        elif settings.ephemeral_secret:
            signer = TokenSigner([settings.ephemeral_secret], max_lifetime=lifetime)
        else:
            signer = TokenSigner.ephemeral(max_lifetime=lifetime)
        rules = {**DEFAULT_RULES, **settings.channel_rules}
        return cls(
            rules,
            signer=signer,
            open_mode=settings.dev_mode,
            revoked=revoked,
            personal_channel=settings.personal_channel,
        )

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset(self.rules)

    def verify(self, raw: str | None) -> ChannelToken | None:
        """The verified token, None when none was given; raise `Forbidden` for a bad one
        (`token_revoked` for one whose `jti` was revoked)."""
        if raw is None or raw == "":
            return None
        try:
            token = self.signer.verify(raw)
        except InvalidToken as exc:
            raise Forbidden(exc.message, exc.code) from None
        if token.jti is not None and self.revoked(token.jti):
            raise token_revoked()
        return token

    def server_subscriptions(self, token: ChannelToken | None) -> tuple[str, ...]:
        """The channels a connection with this token is subscribed to on connect, without
        asking: the token's `subscriptions`, then the personal channel (if configured and the
        token has a subject that makes a valid channel name). Each is still authorized like a
        client's own subscription by whoever subscribes it."""
        if token is None:
            return ()
        channels = list(token.subscriptions)
        if self.personal_channel and token.sub:
            # A subject that cannot make a channel name has no personal channel.
            with contextlib.suppress(InvalidChannel):
                channels.append(validate_channel(self.personal_channel.replace("{sub}", token.sub)))
        return tuple(dict.fromkeys(channels))

    def job_token(self, job_id: str, ttl: float) -> str:
        """A token that can subscribe to this job's channel and nothing else.

        Its subject is empty on purpose: it names no user, so it never satisfies a `user:` rule.
        """
        return self.signer.mint("", {f"job:{job_id}": ["subscribe"]}, ttl)

    def check_namespace(self, channel: str) -> None:
        namespace = namespace_of(channel)
        if namespace not in self.rules:
            known = ", ".join(sorted(self.rules))
            raise Forbidden(f"unknown namespace {namespace!r}; channels live in: {known}")

    def check_subscribe(self, channel: str, token: ChannelToken | None = None) -> None:
        self.check_namespace(channel)
        self._check(channel, "subscribe", self.rules[namespace_of(channel)][0], token)

    def check_client_publish(self, channel: str, token: ChannelToken | None = None) -> None:
        """Publishing from a client (WebSocket, or HTTP with a token) rather than the server."""
        self.check_namespace(channel)
        self._check(channel, "publish", self.rules[namespace_of(channel)][1], token)

    def _check(self, channel: str, right: str, rule: str, token: ChannelToken | None) -> None:
        if rule == NONE:
            raise Forbidden(f"clients cannot {right} on {namespace_of(channel)!r} channels")
        if rule == OPEN or self.open_mode:
            return
        if token is None:
            raise Forbidden(f"{right} on {channel} needs a channel token", "token_required")
        if token.expired():
            raise Forbidden("the token has expired; get a new one", "token_expired")
        if rule == SUBJECT:
            if token.sub and token.sub == channel.partition(":")[2]:
                return
            raise Forbidden(f"only a token whose subject is the channel's name may {right} here")
        if token.grants(channel, right):
            return
        raise Forbidden(f"the token does not allow {right} on {channel}")


TOKEN_REVOKED: Final = "token_revoked"


def token_revoked() -> Forbidden:
    """The refusal of a revoked token (401 `token_revoked`), wherever it is found out."""
    return Forbidden("the token was revoked; get a new one", "token_revoked")


def _none_revoked(jti: str | None) -> bool:
    return False


def bearer_of(headers: Mapping[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def token_of(scope: Scope, *, api_key_value: str | None = None) -> str | None:
    """The channel token a request carries: `?token=`, the cookie, or a Bearer that is not an
    API key (EventSource can send neither headers nor a body, hence the query and cookie).

    The cookie counts only where the guard trusted the request's origin (`COOKIE_TRUSTED`).
    """
    query = QueryParams(scope.get("query_string", b""))
    if query.get("token"):
        return query["token"]
    headers = Headers(scope=scope)
    if scope.get(COOKIE_TRUSTED) is True:
        cookies = cookie_parser(headers.get("cookie", ""))
        if cookies.get(TOKEN_COOKIE):
            return cookies[TOKEN_COOKIE]
    bearer = bearer_of(headers)
    return bearer if bearer is not None and bearer != api_key_value else None
