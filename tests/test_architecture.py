"""The layers of docs/architecture.md, checked: no import goes from a layer to a higher one.

Read from the source with `ast`, nothing imported, so a lazy import inside a function counts as
much as one at the top of a module (it is the same dependency, only paid later); so does an
import under `if TYPE_CHECKING:` (an annotation naming a higher layer's type is an arrow going
up too). Every module of the package must be placed in `LAYER_OF`, so a new module gets a layer
when it is added, not when someone notices.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NamedTuple

PACKAGE: Final = Path(__file__).resolve().parents[1] / "gateway"
ROOT: Final = "gateway"

LAYERS: Final = (
    "vocabulary",
    "protocol",
    "backends",
    "channels",
    "jobs",
    "transports and routes",
    "entry points",
)
"""Lowest first, as docs/architecture.md lists them: a module may import its own layer or one
listed before it."""

LAYER_OF: Final[dict[str, str]] = {
    # A key names a module and everything under it (`gateway.api` is the whole package);
    # the longest key that matches wins. `gateway` itself (its __init__) matches only itself.
    "gateway.vocabulary": "vocabulary",
    "gateway.errors": "vocabulary",
    "gateway.events": "vocabulary",
    "gateway.settings": "vocabulary",
    "gateway.limits": "vocabulary",
    "gateway.logs": "vocabulary",
    "gateway.metrics": "vocabulary",
    "gateway.protocol": "protocol",
    # The HTTP errors' shape (problem+json), as protocol/v1 is the WebSocket errors' frames.
    "gateway.problems": "protocol",
    "gateway.backends": "backends",
    "gateway.auth": "channels",
    "gateway.tokens": "channels",
    "gateway.channels": "channels",
    "gateway.control": "channels",
    "gateway.hub": "channels",
    "gateway.outbound": "channels",
    "gateway.presence": "channels",
    # One process's parts (settings, backend, hub, channel service, limits): it imports nothing
    # above the channels layer, and jobs/services.py, transports and routes build on it.
    "gateway.services": "channels",
    "gateway.jobs": "jobs",
    "gateway.webhooks": "jobs",
    "gateway.transports": "transports and routes",
    "gateway.api": "transports and routes",
    "gateway": "entry points",  # the public API: `handler`, `JobContext`, `publish`
    "gateway.__main__": "entry points",
    "gateway.app": "entry points",
    "gateway.cli": "entry points",
    "gateway.publish": "entry points",
    "gateway.submit": "entry points",
    # Job-queue integrations: the queues' hooks, in the users' own processes, as job state
    # changes (jobs layer) on the backend; nothing in the server imports them.
    "gateway.integrations": "entry points",
    "gateway.client": "entry points",
    # `gateway bridge`: its own process, feeding channels through the Redis backend.
    "gateway.bridges": "entry points",
}

ALLOWED_UPWARD: Final[dict[tuple[str, str], str]] = {
    # (importing module, imported module): why the arrow may go up for now. None today.
}

SANS_IO_FORBIDDEN: Final = frozenset({"asyncio", "socket", "starlette", "uvicorn", "redis"})
CLIENT_MAY_IMPORT: Final = frozenset(
    {"gateway.client", "gateway.errors", "gateway.vocabulary", "gateway.events"}
)
"""What `gateway.client` may use of the package: the shared words, never the server's parts
(it runs in services that have no gateway in them). Nor starlette, uvicorn or redis."""
SERVER_LIBRARIES: Final = frozenset({"starlette", "uvicorn", "redis"})
BELOW_BACKENDS_FORBIDDEN: Final = (
    "gateway.transports",
    "gateway.api",
    "gateway.jobs",
    "gateway.hub",
    "gateway.channels",
)


class Import(NamedTuple):
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_in(source: str, module: str, is_package: bool, known: set[str]) -> Iterator[Import]:
    """Every module `source` imports, wherever the import statement sits.

    `from a import b` names module `a.b` when that is one of `known` (a submodule), else `a`.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                yield Import(module, submodule if submodule in known else origin, node.lineno)


def all_imports() -> list[Import]:
    modules = package_modules()
    known = set(modules)
    found: list[Import] = []
    for module, path in modules.items():
        source = path.read_text(encoding="utf-8")
        found.extend(imports_in(source, module, path.name == "__init__.py", known))
    return found


def in_package(name: str) -> bool:
    return name == ROOT or name.startswith(ROOT + ".")


def under(name: str, prefix: str) -> bool:
    return name == prefix or (prefix != ROOT and name.startswith(prefix + "."))


def layer_of(module: str) -> str | None:
    keys = [key for key in LAYER_OF if under(module, key)]
    return LAYER_OF[max(keys, key=len)] if keys else None


def where(imp: Import) -> str:
    return f"{imp.importer} imports {imp.imported} (line {imp.line})"


def test_the_layer_table_names_real_layers() -> None:
    assert set(LAYER_OF.values()) <= set(LAYERS)


def test_every_module_has_a_layer() -> None:
    unplaced = [module for module in package_modules() if layer_of(module) is None]
    assert not unplaced, f"place these modules in LAYER_OF (and docs/architecture.md): {unplaced}"


def test_every_table_entry_names_a_module() -> None:
    modules = package_modules()
    stale = [key for key in LAYER_OF if not any(under(module, key) for module in modules)]
    assert not stale, f"LAYER_OF names modules that do not exist: {stale}"


def test_no_import_goes_up_a_layer() -> None:
    upward: list[str] = []
    used: set[tuple[str, str]] = set()
    for imp in all_imports():
        if not in_package(imp.imported):
            continue
        importer_layer, imported_layer = layer_of(imp.importer), layer_of(imp.imported)
        assert importer_layer is not None and imported_layer is not None, where(imp)
        if LAYERS.index(imported_layer) <= LAYERS.index(importer_layer):
            continue
        if (imp.importer, imp.imported) in ALLOWED_UPWARD:
            used.add((imp.importer, imp.imported))
            continue
        upward.append(f"{where(imp)}: layer {importer_layer!r} reaches up to {imported_layer!r}")
    assert not upward, "imports going up a layer:\n" + "\n".join(upward)
    assert used == set(ALLOWED_UPWARD), f"unused allowances: {set(ALLOWED_UPWARD) - used}"


def test_protocol_is_sans_io() -> None:
    offending = [
        where(imp)
        for imp in all_imports()
        if under(imp.importer, "gateway.protocol")
        and imp.imported.partition(".")[0] in SANS_IO_FORBIDDEN
    ]
    assert not offending, offending


def test_vocabulary_and_errors_import_only_each_other() -> None:
    pair = {"gateway.vocabulary", "gateway.errors"}
    offending = [
        where(imp)
        for imp in all_imports()
        if imp.importer in pair and in_package(imp.imported) and imp.imported not in pair
    ]
    assert not offending, offending


def test_backends_import_nothing_above_them() -> None:
    offending = [
        where(imp)
        for imp in all_imports()
        if under(imp.importer, "gateway.backends")
        and any(under(imp.imported, prefix) for prefix in BELOW_BACKENDS_FORBIDDEN)
    ]
    assert not offending, offending


def test_the_client_imports_no_server_part() -> None:
    offending = [
        where(imp)
        for imp in all_imports()
        if under(imp.importer, "gateway.client")
        and (
            imp.imported.partition(".")[0] in SERVER_LIBRARIES
            or (
                in_package(imp.imported)
                and not any(under(imp.imported, allowed) for allowed in CLIENT_MAY_IMPORT)
            )
        )
    ]
    assert not offending, offending


def test_the_reader_sees_lazy_relative_and_from_package_imports() -> None:
    """The checks above are only as good as this reader: it must not miss an import."""
    source = (
        "import gateway.hub\n"
        "from . import sse\n"
        "from ..jobs.model import Job\n"
        "from gateway import publish, handler\n"
        "def later() -> None:\n"
        "    from gateway.api import jobs\n"
        "if TYPE_CHECKING:\n"
        "    import redis.asyncio\n"
    )
    known = {"gateway.transports.sse", "gateway.publish", "gateway.api.jobs"}
    found = {imp.imported for imp in imports_in(source, "gateway.transports.ws", False, known)}
    assert found == {
        "gateway.hub",
        "gateway.transports.sse",
        "gateway.jobs.model",
        "gateway.publish",
        "gateway",
        "gateway.api.jobs",
        "redis.asyncio",
    }
