"""`ChannelService`: the one set of channel rules every transport and route applies."""

from __future__ import annotations

import pytest

from gateway.auth import ChannelPolicy
from gateway.backends.memory import open_memory
from gateway.channels import PUBLISH_TOO_FAST, PUBLISH_TOO_FAST_TOKEN, ChannelService
from gateway.errors import EventTooLarge, Forbidden, InvalidEventType, RateLimited
from gateway.limits import KeyedRateLimiter, Limits
from gateway.settings import Settings
from gateway.tokens import TokenSigner


def service(*, open_mode: bool = False, rate: float = 1.0, burst: int = 1) -> ChannelService:
    policy = ChannelPolicy(signer=TokenSigner(["s" * 32]), open_mode=open_mode)
    limits = Limits(publish=KeyedRateLimiter(rate, burst))
    return ChannelService(policy, limits, open_memory(Settings()))


def test_tokens_are_verified_only_for_clients_of_a_secured_gateway() -> None:
    channels = service()
    raw = channels.policy.signer.mint("ann", {"room:a": ["publish"]}, 60)
    token = channels.token(raw, api_key=None)
    assert token is not None and token.sub == "ann"
    assert channels.token(raw, api_key="key") is None
    assert service(open_mode=True).token("garbage", api_key=None) is None
    with pytest.raises(Forbidden) as caught:
        channels.token("garbage", api_key=None)
    assert caught.value.code == "invalid_token"


def test_read_rules() -> None:
    channels = service()
    channels.authorize_read("room:a", api_key="key", token=None)  # a server: known namespace
    with pytest.raises(Forbidden):
        channels.authorize_read("nope:a", api_key="key", token=None)
    with pytest.raises(Forbidden) as caught:
        channels.authorize_read("room:a", api_key=None, token=None)
    assert caught.value.code == "token_required"
    token = channels.token(
        channels.policy.signer.mint("", {"room:*": ["subscribe"]}, 60), api_key=None
    )
    channels.authorize_read("room:b", api_key=None, token=token)


def test_publish_rules_and_rate_limit_keys() -> None:
    channels = service()
    raw = channels.policy.signer.mint("", {"room:a": ["publish"]}, 60)
    token = channels.token(raw, api_key=None)
    with pytest.raises(Forbidden):
        channels.authorize_publish("job:1", api_key=None, token=token)  # `none` for clients
    channels.authorize_publish("job:1", api_key="key", token=None)  # the server may
    channels.authorize_publish("room:a", api_key=None, token=token)
    with pytest.raises(RateLimited) as caught:  # the token's bucket (burst 1) is empty
        channels.authorize_publish("room:a", api_key=None, token=token)
    assert str(caught.value) == PUBLISH_TOO_FAST_TOKEN and caught.value.retry_after > 0
    # On a connection: its own bucket first, then the token's.
    other = service()
    token = other.token(raw, api_key=None)
    bucket = other.connection_bucket()
    other.authorize_publish("room:a", api_key=None, token=token, connection=bucket)
    with pytest.raises(RateLimited) as caught:
        other.authorize_publish("room:a", api_key=None, token=token, connection=bucket)
    assert str(caught.value) == PUBLISH_TOO_FAST


def test_http_publish_needs_a_token_with_publish() -> None:
    channels = service(open_mode=True)  # verified even so: API keys are configured
    with pytest.raises(Forbidden) as caught:
        channels.authorize_http_publish("room:a", raw_token=None)
    assert caught.value.code == "token_required"


async def test_publish_checks_type_namespace_and_size() -> None:
    channels = service()
    with pytest.raises(InvalidEventType) as caught:
        await channels.publish("room:a", "a b", None)
    assert str(caught.value) == "type must be 1-100 characters of [A-Za-z0-9_.:-]"
    with pytest.raises(Forbidden):
        await channels.publish("nope:a", "t", None)
    with pytest.raises(EventTooLarge):
        await channels.publish("room:a", "t", "x" * 2_000_000)
    event = await channels.publish("room:a", "t", {"n": 1})
    assert event is not None and event.channel == "room:a"
    history = await channels.history("room:a", None, 10, api_key="key", token=None)
    assert [e.id for e in history.events] == [event.id]
