"""The token claims of server-side subscriptions and revocation (docs/control.md): `subscriptions`,
`channels` as a list, `jti`, the personal channel setting, and a revoked `jti` refused where
tokens are verified. Pure: signer and policy in this process."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gateway.auth import ChannelPolicy
from gateway.control import Sessions
from gateway.errors import Forbidden, InvalidToken, SettingsError
from gateway.settings import Settings
from gateway.tokens import MAX_SUBSCRIPTIONS, TokenSigner

SECRET = "s" * 40


def signed(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "42", "iat": now, "exp": now + 60, **claims}, SECRET, "HS256")


def test_minted_tokens_have_a_jti_and_carry_their_subscriptions() -> None:
    signer = TokenSigner([SECRET])
    token = signer.verify(
        signer.mint("42", {"room:*": ["subscribe"]}, 60, subscriptions=["user:42"])
    )
    assert token.jti and token.subscriptions == ("user:42",)
    other = signer.verify(signer.mint("42", {"room:*": ["subscribe"]}, 60))
    assert other.jti != token.jti and other.subscriptions == ()


def test_a_channels_list_grants_subscribe_and_subscribes() -> None:
    token = TokenSigner([SECRET]).verify(signed(channels=["user:42", "room:a"]))
    assert token.subscriptions == ("user:42", "room:a")
    assert token.grants("room:a", "subscribe") and not token.grants("room:a", "publish")
    assert not token.grants("room:b", "subscribe")


@pytest.mark.parametrize(
    "claims",
    [
        {"channels": {}, "subscriptions": "user:42"},
        {"channels": {}, "subscriptions": ["not a channel"]},
        {"channels": {}, "subscriptions": [f"room:{n}" for n in range(MAX_SUBSCRIPTIONS + 1)]},
        {"channels": ["room:*"]},
        {"channels": {}, "jti": ""},
        {"channels": {}, "jti": 5},
        {"channels": {}, "jti": "x" * 201},
    ],
)
def test_malformed_claims_make_the_token_invalid(claims: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        TokenSigner([SECRET]).verify(signed(**claims))


def test_the_personal_channel_is_the_subjects_and_none_without_one() -> None:
    policy = ChannelPolicy(signer=TokenSigner([SECRET]), personal_channel="user:{sub}")
    token = policy.signer.verify(signed(channels={}, subscriptions=["room:a", "user:42"]))
    assert policy.server_subscriptions(token) == ("room:a", "user:42")
    job_token = policy.signer.verify(signed(sub="", channels={}))
    assert policy.server_subscriptions(job_token) == ()
    odd = policy.signer.verify(signed(sub="has space", channels={}))
    assert policy.server_subscriptions(odd) == ()
    assert policy.server_subscriptions(None) == ()
    assert ChannelPolicy(signer=policy.signer).server_subscriptions(token) == ("room:a", "user:42")


@pytest.mark.parametrize("template", ["user:me", "no-namespace-{sub}", "user:{sub} x"])
def test_a_personal_channel_setting_must_name_a_channel_per_subject(template: str) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_PERSONAL_CHANNEL"):
        Settings.from_env({"GATEWAY_PERSONAL_CHANNEL": template})


def test_a_revoked_jti_is_refused_by_the_policy() -> None:
    revoked = {"gone"}
    policy = ChannelPolicy(
        signer=TokenSigner([SECRET]), open_mode=False, revoked=lambda jti: jti in revoked
    )
    assert policy.verify(signed(channels={}, jti="kept")) is not None
    with pytest.raises(Forbidden) as refused:
        policy.verify(signed(channels={}, jti="gone"))
    assert refused.value.code == "token_revoked" and refused.value.status == 401
    assert policy.verify(signed(channels={})) is not None  # no jti: nothing to revoke


class _Connection:
    """A `gateway.control.Session` (the transports' own are tested over real connections)."""

    def disconnect(self, code: int, reason: str) -> None: ...

    def server_unsubscribe(self, channel: str, reason: str) -> bool:
        return False


def test_a_connection_registered_after_its_token_was_revoked_is_told_so() -> None:
    """A route checks the token, awaits (loads the job...), then registers the stream or long
    poll: a revocation heard in between reached no connection, so `track` looks again."""
    revoked = {"gone"}
    sessions = Sessions(lambda jti: jti in revoked)
    signer = TokenSigner([SECRET])
    kept, gone = (signer.verify(signed(channels={}, jti=jti)) for jti in ("kept", "gone"))
    assert sessions.track(_Connection(), kept) is True
    assert sessions.track(_Connection(), None) is True  # an API key: nothing to revoke
    late = _Connection()
    assert sessions.track(late, gone) is False
    assert sessions.holding("gone") == [late]  # indexed all the same, forgotten as usual
    sessions.forget(late)
    assert sessions.holding("gone") == []
