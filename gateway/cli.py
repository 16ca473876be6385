"""`gateway serve | worker | bridge | publish | submit | follow`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from gateway.errors import SettingsError
from gateway.settings import Settings
from gateway.settings.flags import add_flags, overrides

log = logging.getLogger("gateway")


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    from gateway.backends.url import backend_kind

    try:
        settings = Settings.from_env(**overrides)
        backend_kind(settings.redis_url)  # a URL no backend opens stops here, not at start-up
        return settings
    except SettingsError as exc:
        sys.exit(f"gateway {args.command}: configuration error: {exc}")


def _configure_logging(level: str) -> None:
    from gateway.logs import configure_logging

    configure_logging(level)


def cmd_serve(args: argparse.Namespace) -> None:
    import functools

    import uvicorn

    from gateway.limits import ConnectionGate
    from gateway.logs import logging_config
    from gateway.transports.internals import groups_for, require
    from gateway.transports.server import (
        GuardedHttpToolsProtocol,
        LeanHttpToolsProtocol,
        websocket_protocol,
    )

    settings = _settings(args, **overrides(args, "serve"))
    _check_certificate(settings)
    _configure_logging(settings.log_level)
    require(*groups_for(args.http, args.ws))  # uvicorn's internals, checked once: loud if gone
    if settings.workers > 1 and not settings.secrets and not settings.ephemeral_secret:
        # One generated secret for all worker processes, so a token minted by one verifies in
        # the others (it still changes on restart: configure GATEWAY_SECRET for that).
        import secrets

        settings = settings.replace(ephemeral_secret=secrets.token_urlsafe(32))
    guarded = {"lean": LeanHttpToolsProtocol, "httptools": GuardedHttpToolsProtocol}
    if args.http in guarded:
        # Each worker process unpickles its own copy of the gate: connections are counted
        # per process, like every other limit.
        http: Any = functools.partial(
            guarded[args.http], gate=ConnectionGate.from_settings(settings)
        )
    else:
        http = args.http
        log.warning(
            "--http %s: no request head timeout and no per-address count of TCP connections "
            "(GATEWAY_HEADER_TIMEOUT, GATEWAY_MAX_CONNECTIONS_PER_CLIENT); use lean or httptools "
            "on an open network",
            args.http,
        )
    options: dict[str, Any] = {
        "ws_max_size": settings.max_message,
        "h11_max_incomplete_event_size": 16 * 1024,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": logging_config(settings.log_level),
        # Below `info` uvicorn would still format each request's access line (the path
        # percent-quoted character by character: ~4 % of a publish) only to drop it.
        "access_log": settings.log_level.lower() in {"info", "debug", "trace"},
        "ws_per_message_deflate": False,
        "http": http,
        "ws": websocket_protocol(args.ws),
        "timeout_graceful_shutdown": 5,
        # X-Forwarded-For/-Proto only from GATEWAY_TRUSTED_PROXIES (uvicorn would believe
        # 127.0.0.1 by default, and so anyone behind a local sidecar could pick their address).
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
        "lifespan": "on",
    }
    if settings.ssl_certfile is not None:
        options["ssl_certfile"] = str(settings.ssl_certfile)
        options["ssl_keyfile"] = str(settings.ssl_keyfile)
    scheme = "https" if settings.ssl_certfile is not None else "http"
    from gateway.backends.url import backend_kind

    log.info(
        "serving on %s://%s:%d (backend: %s)",
        scheme,
        settings.host,
        settings.port,
        backend_kind(settings.redis_url),
    )
    if settings.workers > 1:
        os.environ.update(settings.to_env())
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=settings.workers, **options)
    else:
        from gateway.app import create_app

        uvicorn.run(create_app(settings), **options)


def _check_certificate(settings: Settings) -> None:
    """A certificate that cannot be loaded stops the start with one line, not a traceback."""
    if settings.ssl_certfile is None:
        return
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.ssl_certfile, settings.ssl_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        sys.exit(
            "gateway serve: configuration error: --ssl-certfile/--ssl-keyfile "
            f"(GATEWAY_SSL_CERTFILE/GATEWAY_SSL_KEYFILE) cannot be loaded: {exc}"
        )


def cmd_worker(args: argparse.Namespace) -> None:
    settings = _settings(args, **overrides(args, "worker"))
    from gateway.backends.url import REDIS, backend_kind

    if backend_kind(settings.redis_url) != REDIS:
        sys.exit(
            "gateway worker: REDIS_URL is not set. A separate worker shares jobs with gateways "
            "through Redis; without Redis, `gateway serve` runs an embedded worker."
        )
    _configure_logging(settings.log_level)
    with asyncio.Runner(loop_factory=_fastest_loop()) as runner:
        runner.run(_run_worker(settings, args.grace))


def _fastest_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a dependency on Linux and macOS): the
    worker spends much of its time in the loop itself; else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _run_worker(settings: Settings, grace: float) -> None:
    from gateway.backends.url import open_backend
    from gateway.jobs.registry import REGISTRY
    from gateway.jobs.worker import Worker

    REGISTRY.load_modules(settings.handlers)
    backend = open_backend(settings)
    await backend.start()
    worker = Worker(backend, REGISTRY, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info(
        "worker %s: concurrency %d, job types: %s",
        worker.name,
        settings.concurrency,
        ", ".join(REGISTRY.names()),
    )
    try:
        await worker.run(grace=grace)
    finally:
        await backend.close()


def cmd_bridge(args: argparse.Namespace) -> None:
    from gateway.bridges.flags import config_from_args

    try:
        config = config_from_args(args)
    except SettingsError as exc:
        sys.exit(f"gateway bridge: configuration error: {exc}")
    settings = _settings(args, redis_url=config.redis_url)
    _configure_logging(settings.log_level)
    asyncio.run(_run_bridge(config, settings))


async def _run_bridge(config: Any, settings: Settings) -> None:
    from gateway.bridges.runner import run_bridge

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    log.info("bridge: %s", ", ".join(f"{s.name} ({s.kind})" for s in config.sources))
    with contextlib.suppress(asyncio.CancelledError):
        await run_bridge(config, settings)


def cmd_publish(args: argparse.Namespace) -> None:
    from gateway.publish import PublishError, publish

    data = _json_arg(args.data, "--data")
    try:
        event_id = publish(args.channel, args.type, data, url=args.url)
    except (PublishError, ValueError) as exc:
        sys.exit(f"gateway publish: {exc}")
    print(event_id)


def _json_arg(raw: str | None, name: str) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        sys.exit(f"{name} is not valid JSON: {exc}")


def cmd_submit(args: argparse.Namespace) -> None:
    from gateway.client import terminal

    data = _json_arg(args.data, "--data")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(
            asyncio.run(
                terminal.submit(
                    args.url,
                    args.type,
                    data,
                    follow=args.follow,
                    api_key=os.environ.get("GATEWAY_API_KEY"),
                    **_heartbeat_option(args),
                )
            )
        )


def cmd_follow(args: argparse.Namespace) -> None:
    from gateway.client import terminal

    if args.channel is None and not args.token:
        sys.exit("gateway follow: name a channel, or give --token to follow its server-side ones")
    with contextlib.suppress(KeyboardInterrupt):
        code = asyncio.run(
            terminal.follow(
                args.url,
                args.channel,
                args.since,
                api_key=os.environ.get("GATEWAY_API_KEY"),
                token=args.token,
                **_heartbeat_option(args),
            )
        )
        if code is not None:
            sys.exit(code)


def _heartbeat_option(args: argparse.Namespace) -> dict[str, float]:
    """`--heartbeat` when given; the client's own default otherwise (one place for it)."""
    return {} if args.heartbeat is None else {"heartbeat": args.heartbeat}


def _heartbeat_arg(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError("seconds between 1 and 3600")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Real-time notification gateway for background jobs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    url_default = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000")

    serve = commands.add_parser("serve", help="run the HTTP/WebSocket/SSE gateway")
    add_flags(serve, "serve")
    serve.add_argument(
        "--http",
        choices=["lean", "httptools", "h11"],
        default="lean",
        help="uvicorn HTTP protocol (default: lean = httptools, lighter per connection)",
    )
    serve.add_argument(
        "--ws",
        choices=["lean", "websockets-sansio", "websockets", "wsproto"],
        default="lean",
        help="uvicorn WebSocket protocol (default: lean = websockets-sansio, lighter); the "
        "fan-out writes straight to the socket only with lean/websockets-sansio + lean/httptools",
    )
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run job handlers (needs REDIS_URL)")
    add_flags(worker, "worker")
    worker.add_argument("--grace", type=float, default=10.0, help="seconds to finish on SIGTERM")
    worker.set_defaults(func=cmd_worker)

    bridge = commands.add_parser(
        "bridge",
        help="publish messages from RabbitMQ, MQTT, NATS JetStream or a PostgreSQL outbox "
        "into channels (needs Redis)",
    )
    from gateway.bridges.flags import add_bridge_flags

    add_bridge_flags(bridge)
    bridge.set_defaults(func=cmd_bridge)

    publish = commands.add_parser("publish", help="publish one event to a channel")
    publish.add_argument("channel")
    publish.add_argument("--type", default="message")
    publish.add_argument("--data", default=None, help="JSON")
    publish.add_argument("--url", default=None, help="gateway URL when REDIS_URL is not set")
    publish.set_defaults(func=cmd_publish)

    submit = commands.add_parser("submit", help="submit a job (and follow it)")
    submit.add_argument("type")
    submit.add_argument("--data", default=None, help="JSON")
    submit.add_argument("--follow", action="store_true", help="show progress until it ends")
    submit.add_argument("--url", default=url_default)
    submit.set_defaults(func=cmd_submit)

    follow = commands.add_parser(
        "follow",
        help="print a channel's events as JSON lines (job:<id>: until the job ends; "
        "exit 0 completed, 1 failed/cancelled)",
    )
    follow.add_argument(
        "channel", nargs="?", default=None, help="omit with --token: its server-side channels"
    )
    follow.add_argument("--since", default=None)
    follow.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="a channel token to stream with (default $GATEWAY_TOKEN); without a channel, "
        "follow the token's server-side subscriptions",
    )
    follow.add_argument("--url", default=url_default)
    follow.set_defaults(func=cmd_follow)
    for command in (submit, follow):
        command.add_argument(
            "--heartbeat",
            type=_heartbeat_arg,
            default=None,
            help="seconds between heartbeats asked of the stream; twice that of silence counts "
            "as a dead connection and resumes it (default 4)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command not in {"serve", "worker"}:
        # The client commands log little (httpx at warning), but through the same filter.
        _configure_logging(os.environ.get("GATEWAY_LOG_LEVEL", "warning"))
    args.func(args)


if __name__ == "__main__":
    main()
