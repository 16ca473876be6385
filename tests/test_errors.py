"""`gateway/errors.py`: its docstring's tree is the class tree, and every error the gateway
defines is a `GatewayError`."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import gateway
from gateway import errors
from gateway.errors import GatewayError
from gateway.problems import Problem

GATEWAY_DIR = Path(gateway.__file__).parent
TREE_LINE = re.compile(r"(?P<indent> *)(?P<name>\w+)(?: \(also (?P<also>[\w, ]+)\))?")


def documented_tree() -> dict[str, tuple[str | None, set[str]]]:
    """Each class of the docstring's tree: its parent (None for the root) and its `also` bases."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    tree: dict[str, tuple[str | None, set[str]]] = {}
    parents: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = TREE_LINE.match(line)
        assert match is not None, f"a tree line that does not parse: {line!r}"
        depth = len(match["indent"])
        while parents and parents[-1][0] >= depth:
            parents.pop()
        also = {name.strip() for name in (match["also"] or "").split(",") if name.strip()}
        tree[match["name"]] = (parents[-1][1] if parents else None, also)
        parents.append((depth, match["name"]))
    return tree


def defined_errors() -> dict[str, type[BaseException]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == errors.__name__
    }


def test_docstring_tree_names_every_error_class() -> None:
    assert set(documented_tree()) == set(defined_errors())


def test_docstring_tree_gives_each_class_its_parent_and_other_bases() -> None:
    classes = defined_errors()
    for name, (parent, also) in documented_tree().items():
        bases = classes[name].__bases__
        ours = [base.__name__ for base in bases if base.__module__ == errors.__name__]
        others = {base.__name__ for base in bases if base.__module__ != errors.__name__}
        if parent is None:
            assert name == "GatewayError" and ours == [] and others == {"Exception"}
        else:
            assert ours == [parent], f"{name} derives from {ours}, the tree says {parent}"
            assert others == also, f"{name} also derives from {others}, the tree says {also}"


def test_every_error_has_a_code() -> None:
    for name, cls in defined_errors().items():
        assert isinstance(getattr(cls, "code", None), str), name


def builtin_exception(name: str) -> bool:
    value = getattr(builtins, name, None)
    return inspect.isclass(value) and issubclass(value, BaseException)


def test_no_module_defines_an_error_outside_the_tree() -> None:
    """No `class X(Exception)` (or `ValueError`, ...) anywhere but errors.py, nested ones too."""
    found = []
    for path in sorted(GATEWAY_DIR.rglob("*.py")):
        if path == GATEWAY_DIR / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if builtin_exception(name):
                    found.append(f"{path.relative_to(GATEWAY_DIR)}: {node.name}({name})")
    assert found == []


def test_every_exception_class_in_gateway_is_a_gateway_error() -> None:
    """Catches what the syntax check cannot: errors derived from a library's exceptions."""
    strays = []
    for module_info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if module_info.name == "gateway.__main__":
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and value.__module__ == module.__name__
                and issubclass(value, BaseException)
                and not issubclass(value, GatewayError)
            ):
                strays.append(f"{module.__name__}.{name}")
    assert strays == []


def test_problem_is_a_gateway_error() -> None:
    assert issubclass(Problem, GatewayError)
    assert Problem(404, "Not Found", code="not-found").code == "not-found"
