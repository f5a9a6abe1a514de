"""Type hints of the public API (ktls_ossl ships py.typed, so type checkers take them as the truth).

Every public function, method and property accessor reachable from ``ktls_ossl.__all__`` (the
classes there, and the public functions and classes of the ``kernel``, ``pump`` and ``session``
modules) annotates each parameter
and its return; every annotation evaluates to something real on this Python; the py.typed marker
is installed with the package.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.resources
import importlib.util
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterator

import pytest

import ktls_ossl

# Names typeshed defines only in its stubs: modules import them under ``if TYPE_CHECKING:`` and
# they do not exist at run time, so typing.Any stands in for them when annotations are evaluated.
STUB_ONLY_NAMES = {
    "_typeshed": {"ReadableBuffer", "WriteableBuffer", "StrOrBytesPath"},
    "socket": {"_Address", "_RetAddress", "_SendableFile"},
}


def _public_functions(qualname: str, cls: type,
                      module: types.ModuleType) -> Iterator[tuple[str, Callable, types.ModuleType]]:
    """A class's own public methods (and __init__) and property accessors, those of ktls_ossl's
    classes it inherits from (mixins) included, each with the module its annotations are in."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("ktls_ossl."):
            yield from _functions_of(qualname, cls, klass, sys.modules[klass.__module__], seen)


def _functions_of(qualname: str, cls: type, klass: type, module: types.ModuleType,
                  seen: set[str]) -> Iterator[tuple[str, Callable, types.ModuleType]]:
    for name, member in vars(klass).items():
        if (name.startswith("_") and name != "__init__") or name in seen:
            continue
        seen.add(name)
        if name == "__init__" and getattr(member, "__qualname__", "") != f"{cls.__qualname__}.__init__":
            continue  # not the class's own (typing.Protocol puts a placeholder there)
        if isinstance(member, property):
            for accessor, function in (("get", member.fget), ("set", member.fset), ("del", member.fdel)):
                if function is not None:
                    yield f"{qualname}.{name}.{accessor}", function, module
        elif isinstance(member, (classmethod, staticmethod)):
            yield f"{qualname}.{name}", member.__func__, module
        elif inspect.isfunction(member):
            yield f"{qualname}.{name}", member, module


def public_api() -> list[tuple[str, Callable, types.ModuleType]]:
    """(qualified name, function, module whose namespace its annotations use) for the public API."""
    found = []
    for name in ktls_ossl.__all__:
        obj = getattr(ktls_ossl, name)
        if isinstance(obj, types.ModuleType):
            for member_name, member in vars(obj).items():
                # Only what the module defines itself, not what it imports.
                if member_name.startswith("_") or getattr(member, "__module__", None) != obj.__name__:
                    continue
                if inspect.isfunction(member):
                    found.append((f"{name}.{member_name}", member, obj))
                elif inspect.isclass(member):
                    found.extend(_public_functions(f"{name}.{member_name}", member, obj))
        elif inspect.isclass(obj):
            found.extend(_public_functions(name, obj, sys.modules[obj.__module__]))
        elif inspect.isfunction(obj):
            found.append((name, obj, sys.modules[obj.__module__]))
    return found


def missing_annotations(qualname: str, function: Callable) -> list[str]:
    signature = inspect.signature(function)
    missing = [f"{qualname}({parameter.name})" for parameter in signature.parameters.values()
               if parameter.name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty]
    # __init__ returns None by definition; annotating it is a matter of style.
    if signature.return_annotation is inspect.Signature.empty and function.__name__ != "__init__":
        missing.append(f"{qualname} -> ?")
    return missing


@functools.lru_cache(maxsize=None)
def type_checking_names(module: types.ModuleType) -> dict[str, object]:
    """What ``module`` imports under ``if TYPE_CHECKING:``, as run-time objects: the real object
    where it exists at run time (an import cycle is why it is only imported there), typing.Any for
    typeshed's stub-only names. A name that is neither fails here, as a type checker would."""
    names: dict[str, object] = {}
    for node in ast.parse(inspect.getsource(module)).body:
        if not (isinstance(node, ast.If)
                and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")):
            continue
        for statement in node.body:
            assert isinstance(statement, ast.ImportFrom), f"{module.__name__}: {ast.unparse(statement)}"
            source = importlib.util.resolve_name("." * statement.level + (statement.module or ""),
                                                 module.__package__)
            for alias in statement.names:
                if alias.name in STUB_ONLY_NAMES.get(source, ()):
                    names[alias.asname or alias.name] = typing.Any
                else:
                    names[alias.asname or alias.name] = getattr(importlib.import_module(source), alias.name)
    return names


PUBLIC_API = public_api()


def test_public_api_is_found():
    # The walk itself must reach the API it vouches for.
    names = {qualname for qualname, _, _ in PUBLIC_API}
    assert {"SSLContext.load_cert_chain", "SSLContext.verify_mode.get", "KTLSSocket.recv",
            "Session.__init__", "create_default_context", "kernel.send_record",
            "kernel.ProbeReport.support", "pump.RecordPump.step", "pump.OpenSSLEngine.__init__",
            "session.hand_over", "session.KernelSession.read_into"} <= names


def test_every_parameter_and_return_is_annotated():
    missing = [entry for qualname, function, _ in PUBLIC_API
               for entry in missing_annotations(qualname, function)]
    assert missing == []


@pytest.mark.parametrize("qualname, function, module", PUBLIC_API, ids=[entry[0] for entry in PUBLIC_API])
def test_annotations_name_real_objects(qualname, function, module):
    hints = typing.get_type_hints(function, localns=type_checking_names(module))
    annotated = {name for name, parameter in inspect.signature(function).parameters.items()
                 if parameter.annotation is not inspect.Parameter.empty}
    assert annotated <= hints.keys()


def test_py_typed_marker_is_installed():
    assert (importlib.resources.files("ktls_ossl") / "py.typed").is_file()
