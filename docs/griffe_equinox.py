"""A Griffe extension for the API reference: signatures for Equinox modules.

`eqx.Module` subclasses are dataclasses made by a metaclass, which static analysis
does not see, so the reference would show `PIDController` without its arguments.
This rebuilds each one's `__init__` from its annotated fields, in dataclass order
(base classes first), unless the class (or a base) writes its own `__init__` or is
abstract.
Loaded by mkdocstrings (see `mkdocs.yml`); not part of the package.
"""

import ast
from typing import Any

import griffe


_NOT_FIELDS = ("ClassVar", "AbstractClassVar")


def _is_module(cls: griffe.Class, seen=()) -> bool:
    """Whether `cls` derives from `equinox.Module`."""
    for base in cls.bases:
        path = getattr(base, "canonical_path", str(base))
        if path.startswith("equinox") and path.endswith("Module"):
            return True
    for base in _package_bases(cls):
        if base.path not in seen and _is_module(base, (*seen, cls.path)):
            return True
    return False


def _package_bases(cls: griffe.Class) -> list[griffe.Class]:
    bases = []
    for base in cls.resolved_bases:
        if isinstance(base, griffe.Class):
            bases.append(base)
    return bases


def _fields(cls: griffe.Class) -> list[griffe.Parameter]:
    params: dict[str, griffe.Parameter] = {}
    for base in reversed(_package_bases(cls)):
        for p in _fields(base):
            params[p.name] = p
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        if "property" in member.labels:
            continue
        if "class-attribute" in member.labels and (
            "instance-attribute" not in member.labels
        ):
            continue
        if any(name in str(member.annotation) for name in _NOT_FIELDS):
            continue
        params[member.name] = griffe.Parameter(
            member.name,
            annotation=member.annotation,
            kind=griffe.ParameterKind.positional_or_keyword,
            default=_default(member.value),
            docstring=member.docstring,
        )
    return list(params.values())


def _default(value):
    """The default a field's declaration gives: `x: T = 1` gives `1`; for
    `x: T = eqx.field(static=True, default=1)` the `default=` (or
    `default_factory=`, shown called), not the `field(...)` call; none without."""
    if value is None:
        return None
    try:
        node = ast.parse(str(value), mode="eval").body
    except SyntaxError:
        return value
    if not (
        isinstance(node, ast.Call)
        and ast.unparse(node.func).rsplit(".", 1)[-1] == "field"
    ):
        return value
    for keyword in node.keywords:
        if keyword.arg == "default":
            return ast.unparse(keyword.value)
        if keyword.arg == "default_factory":
            return f"{ast.unparse(keyword.value)}()"
    return None


def _has_own_init(cls: griffe.Class) -> bool:
    init = cls.members.get("__init__")
    if init is not None and "equinox-fields" not in init.labels:
        return True
    return any(_has_own_init(base) for base in _package_bases(cls))


def _visit(obj, done: set[str]):
    if obj.is_alias or obj.path in done:
        return
    done.add(obj.path)
    if (
        isinstance(obj, griffe.Class)
        and not obj.name.startswith("Abstract")  # never instantiated
        and _is_module(obj)
        and not _has_own_init(obj)
    ):
        init = griffe.Function(
            "__init__",
            lineno=0,
            endlineno=0,
            parent=obj,
            parameters=griffe.Parameters(
                griffe.Parameter(
                    "self", kind=griffe.ParameterKind.positional_or_keyword
                ),
                *_fields(obj),
            ),
            returns="None",
        )
        init.labels.add("equinox-fields")
        obj.set_member("__init__", init)
    for member in list(obj.members.values()):
        if not member.is_alias and (member.is_module or member.is_class):
            _visit(member, done)


class EquinoxFields(griffe.Extension):
    """Give every Equinox module without an explicit `__init__` its dataclass one."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        del kwargs
        _visit(pkg, set())
