"""Channel tokens: short-lived JWTs (HS256) that grant rights on channels.

A token names a subject (`sub`), an expiry (`exp`) and `channels`: an object mapping a channel
name or a `namespace:*` pattern to rights among `"subscribe"` and `"publish"`. It is a plain JWT,
so any backend can mint one with a standard JWT library and the shared secret, without calling
the gateway. Several secrets may be configured for rotation: the first signs, all verify.

Server-side subscriptions (docs/control.md): `subscriptions`, a list of channels the connection
is subscribed to on connect; `channels` may be such a list too, short for granting `subscribe`
on each and subscribing to them all. `jti`, the token's id, is what `POST /tokens/revoke` names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt
import orjson

from gateway.errors import InvalidChannel, InvalidToken
from gateway.events import validate_channel

RIGHTS: Final = frozenset({"subscribe", "publish"})
ALGORITHM: Final = "HS256"
MAX_TOKEN_BYTES: Final = 8192
"""Longer strings are refused before any decoding work: a token is a few hundred bytes."""
MAX_SUBSCRIPTIONS: Final = 32
"""Most channels a token may subscribe its connections to (`subscriptions`, a `channels` list)."""
MAX_JTI: Final = 200
CLOCK_SKEW: Final = 60.0
"""Seconds another minter's clock may be ahead of ours (an `iat` in the future, or an `exp`
past the longest lifetime when the token has no `iat`)."""


@dataclass(frozen=True, slots=True)
class ChannelToken:
    """A verified token: who it was issued to, until when, and what it grants."""

    sub: str
    exp: float
    channels: Mapping[str, frozenset[str]]
    raw: str = ""
    subscriptions: tuple[str, ...] = ()
    """Channels every connection made with this token is subscribed to on connect."""
    jti: str | None = None
    """The token's id, if it has one: what revocation names (`POST /tokens/revoke`)."""

    def grants(self, channel: str, right: str) -> bool:
        """Whether an exact entry or a `namespace:*` pattern gives `right` on `channel`."""
        exact = self.channels.get(channel)
        if exact is not None and right in exact:
            return True
        namespace = channel.partition(":")[0]
        pattern = self.channels.get(namespace + ":*")
        return pattern is not None and right in pattern

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.exp


def parse_subscriptions(value: Any, what: str = "subscriptions") -> tuple[str, ...]:
    """Validate a list of channels to subscribe to on connect; `ValueError` for the client."""
    if not isinstance(value, list) or len(value) > MAX_SUBSCRIPTIONS:
        raise ValueError(f"'{what}' must be a list of at most {MAX_SUBSCRIPTIONS} channel names")
    try:
        return tuple(dict.fromkeys(validate_channel(name) for name in value))
    except InvalidChannel as exc:
        raise ValueError(f"'{what}': {exc}") from None


def parse_grants(value: Any) -> dict[str, frozenset[str]]:
    """Validate a `channels` claim; raise `ValueError` with a message for the client."""
    if not isinstance(value, dict):
        raise ValueError("'channels' must be an object mapping channel names to rights")
    grants: dict[str, frozenset[str]] = {}
    for name, rights in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ValueError("channel names in 'channels' are 1-200 character strings")
        if not isinstance(rights, list) or not all(isinstance(r, str) for r in rights):
            raise ValueError(f"rights for {name[:60]!r} must be a list like ['subscribe']")
        unknown = set(rights) - RIGHTS
        if unknown:
            raise ValueError(f"unknown rights {sorted(unknown)}; use 'subscribe' and 'publish'")
        grants[name] = frozenset(rights)
    return grants


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_HS256_HEADER: Final = _b64url(b'{"alg":"HS256","typ":"JWT"}')
"""The JOSE header of every token minted here (PyJWT writes the same bytes)."""


class TokenSigner:
    """Mints and verifies channel tokens with the configured secrets.

    `max_lifetime` (seconds, `GATEWAY_MAX_TOKEN_TTL`) bounds every token it accepts, including
    those minted elsewhere with the secret: a token whose `exp - iat` (or `exp - now` without an
    `iat`) exceeds it is refused, so a leaked token cannot have been made to live for years.
    """

    def __init__(self, secrets_: Sequence[str], *, max_lifetime: float | None = None) -> None:
        if not secrets_:
            raise ValueError("a TokenSigner needs at least one secret")
        self.secrets = tuple(secrets_)
        self.max_lifetime = max_lifetime
        self._mac = hmac.new(self.secrets[0].encode(), digestmod=hashlib.sha256)

    @classmethod
    def ephemeral(cls, *, max_lifetime: float | None = None) -> TokenSigner:
        """A random per-process secret: tokens verify only in this process, until it restarts."""
        return cls([secrets.token_urlsafe(32)], max_lifetime=max_lifetime)

    def mint(
        self,
        sub: str,
        channels: Mapping[str, Sequence[str]],
        ttl: float,
        *,
        subscriptions: Sequence[str] = (),
        jti: str | None = None,
    ) -> str:
        """A signed token; it gets a random `jti` (so it can be revoked) unless given one."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "iat": now,
            "exp": now + max(1, round(ttl)),
            "jti": jti or secrets.token_urlsafe(12),
            "channels": {name: sorted(set(rights)) for name, rights in channels.items()},
        }
        if subscriptions:
            claims["subscriptions"] = list(subscriptions)
        # A plain HS256 JWS (RFC 7515 compact form), made here rather than by PyJWT: a job
        # token is minted for every submission, and PyJWT's checks of the key (is it a PEM
        # or an SSH public key?) cost more than the signature. Verified by PyJWT as any is.
        signing_input = _HS256_HEADER + b"." + _b64url(orjson.dumps(claims))
        mac = self._mac.copy()  # the key's HMAC state, prepared once
        mac.update(signing_input)
        signature = mac.digest()
        return (signing_input + b"." + _b64url(signature)).decode()

    def verify(self, token: str) -> ChannelToken:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("invalid_token", "the token is missing or malformed")
        expired = False
        for secret in self.secrets:
            try:
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=[ALGORITHM],
                    options={"require": ["exp", "sub", "channels"]},
                )
            except jwt.ExpiredSignatureError:
                expired = True
                continue
            except jwt.PyJWTError:
                continue
            self._check_lifetime(claims)
            return _from_claims(claims, token)
        if expired:
            raise InvalidToken("token_expired", "the token has expired; get a new one")
        raise InvalidToken("invalid_token", "the token is not valid (bad signature or claims)")

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        if self.max_lifetime is None:
            return
        exp, iat, now = claims.get("exp"), claims.get("iat"), time.time()
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return  # `_from_claims` refuses it
        if isinstance(iat, int | float) and not isinstance(iat, bool):
            if iat > now + CLOCK_SKEW:
                raise InvalidToken("invalid_token", "the token's 'iat' is in the future")
            lifetime, slack = exp - iat, 0.0
        else:
            lifetime, slack = exp - now, CLOCK_SKEW
        if lifetime > self.max_lifetime + slack:
            raise InvalidToken(
                "invalid_token",
                f"the token lives longer than the {self.max_lifetime:g} s this gateway accepts "
                "(GATEWAY_MAX_TOKEN_TTL)",
            )


def _from_claims(claims: dict[str, Any], raw: str) -> ChannelToken:
    sub = claims.get("sub")
    exp = claims.get("exp")
    if not isinstance(sub, str) or not isinstance(exp, int | float):
        raise InvalidToken("invalid_token", "the token's 'sub' or 'exp' claim is malformed")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI):
        raise InvalidToken("invalid_token", f"the token's 'jti' is a 1-{MAX_JTI} character string")
    value = claims.get("channels")
    try:
        if isinstance(value, list):
            subscriptions = parse_subscriptions(value, "channels")
            grants = {name: frozenset({"subscribe"}) for name in subscriptions}
        else:
            grants = parse_grants(value)
            subscriptions = ()
        if "subscriptions" in claims:
            listed = parse_subscriptions(claims["subscriptions"])
            subscriptions = tuple(dict.fromkeys((*subscriptions, *listed)))[:MAX_SUBSCRIPTIONS]
    except ValueError as exc:
        raise InvalidToken("invalid_token", f"the token's claims: {exc}") from None
    return ChannelToken(
        sub=sub,
        exp=float(exp),
        channels=grants,
        raw=raw,
        subscriptions=subscriptions,
        jti=jti,
    )
