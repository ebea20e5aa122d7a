"""Write ``agency_data/sync/_api.py``, the synchronous twins of the async classes, from the
async classes' own source: ``python -m agency_data.sync._generate`` (``--check`` only says
whether the file is current).

The twins are generated, never written by hand, so they cannot drift from the async API
(psycopg's habit; redis-py's hand-kept twins are the warning). From the :class:`DataLayer`
down, every class a public member hands out that has async methods gets a twin of the same
name, built on :class:`~agency_data.sync._wrapper.Wrapper`, with the same base classes
(their twins), and members mapped thus, signatures, annotations and defaults copied as
written and docstrings' first paragraphs too:

* ``async def f`` -> ``def f`` that runs the coroutine through the portal;
* an async generator, or a method handing out an ``AsyncIterator`` -> a sync iterator;
* ``@asynccontextmanager`` (and ``__aenter__``/``__aexit__``) -> a sync context manager
  whose block runs its calls in the block's context (see :mod:`agency_data.sync.portal`);
* a member giving another wrapped class -> its twin; ``aclose`` -> ``close``;
* a parameter taking an iterable -> read in the caller's thread when it is a generator (or
  any iterable that runs the caller's code), whole or, for a stream, a chunk at a time;
* a parameter taking a function the layer awaits (:data:`CALLBACKS`) -> a plain function,
  run in the caller's thread;
* other plain methods run on the loop's thread (the async objects' state is the loop's);
  properties and attributes are read directly.

Anything it does not know how to map (a wrapped class inside a container, an unknown kind of
callable parameter, an attribute whose type it cannot tell) stops the generator with a message
saying what to do, rather than being copied wrongly.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import copy
import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["COMMAND", "TARGET", "generate", "main"]

TARGET = Path(__file__).with_name("_api.py")
COMMAND = "python -m agency_data.sync._generate"
ROOT = ("agency_data.manager", "DataLayer")

# Wrapped although they have no async method: what their methods take runs in the caller's
# thread (a transaction's on-commit hooks), or what they hand out has async methods.
ALSO_WRAPPED = {
    ("agency_data.postgres.database", "Transaction"),
    # Agent memory hands out its knowledge graph, which has async methods, before it has any
    # of its own (redundant once it does).
    ("agency_data.memory.store", "Memory"),
    ("agency_data.memory.store", "ManagedMemory"),
}

# Classes with async methods handed out as they are, not wrapped: values whose async methods
# are the layer's own plumbing (a collection's embedder is configuration to sync code).
NOT_WRAPPED = {("agency_data.vectors.embedders", "Embedder")}

# Members left out of the sync face, and why: each hands out the async machinery itself,
# which synchronous code cannot use (it is reachable through ``.aio`` for async code).
EXCLUDED = {
    "DataLayer.pool": "the asyncio connection pool (dl.aio.pool, from async code)",
    "DataLayer.redis": "the redis.asyncio client (dl.aio.redis, from async code)",
    "Transaction.conn": "the transaction's asyncio connection",
    "Lock.lost": "an asyncio.Event (lock.held says the same)",
}
RENAMED = {"aclose": "close"}
# Attributes the caller sets (the twin's property has a setter); the others are read-only.
SETTABLE = {"Job.result"}

# Parameters taking a function the layer awaits. The sync face takes a plain function (an
# async one still works), run in the thread waiting on the call: annotation as written ->
# (the sync face's annotation, how the argument is handed to the async method).
CALLBACKS = {
    "Callable[[Transaction], Awaitable[T]]": (
        "Callable[[Transaction], T]",
        "self._portal.callback({arg}, Transaction._of)",
    ),
    "Iterable[Operation]": (
        "Iterable[tuple[Query, Params] | Callable[[Transaction], Any]]",
        "each_callback({arg}, self._portal, Transaction._of)",
    ),
    "Loader": ("Callable[[], Any]", "self._portal.callback({arg})"),
    "Hook": ("Callable[[], None]", "self._portal.callback({arg})"),
    "Handler": ("Callable[[Task], Any]", "self._portal.callback({arg})"),
    "AlertCallback": ("Callable[[Alert], None]", "self._portal.callback({arg})"),
}
# Parameters taking a plain function the layer calls (not awaits) on the loop's thread, as
# they are: a progress report, which must not call the sync API itself.
PASSED_AS_IS = {"Callable[[IndexProgress], Any] | None"}

# Names the generated code itself uses, and where they come from.
_OWN = {
    "Any": ("typing", "Any"),
    "Self": ("typing", "Self"),
    "overload": ("typing", "overload"),
    "cast": ("typing", "cast"),
    "ClassVar": ("typing", "ClassVar"),
    "Callable": ("collections.abc", "Callable"),
    "Generator": ("collections.abc", "Generator"),
    "Iterable": ("collections.abc", "Iterable"),
    "AbstractContextManager": ("contextlib", "AbstractContextManager"),
    "TracebackType": ("types", "TracebackType"),
    "Portal": ("agency_data.sync.portal", "Portal"),
    "Wrapper": ("agency_data.sync._wrapper", "Wrapper"),
    "each_callback": ("agency_data.sync._wrapper", "each_callback"),
}
_ASYNC_ITERATORS = {"AsyncIterator", "AsyncGenerator", "AsyncIterable"}
_KEPT_DUNDERS = {"__aenter__": "__enter__", "__aexit__": "__exit__", "__call__": "__call__"}


class GenerationError(Exception):
    """The generator met something it cannot map; the message says what to change."""


# -- the package's source ------------------------------------------------------------------


@dataclass
class Module:
    """One module of the package, parsed."""

    name: str
    tree: ast.Module
    lines: list[str]
    defined: dict[str, ast.stmt]
    imports: dict[str, tuple[str, str | None]]
    exported: set[str]


@cache
def module(name: str) -> Module:
    """The parsed source of module ``name``."""
    path = inspect.getsourcefile(importlib.import_module(name))
    if path is None:
        raise GenerationError(f"no source for module {name}")
    text = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(text)
    defined: dict[str, ast.stmt] = {}
    imports: dict[str, tuple[str, str | None]] = {}
    exported: set[str] = set()
    for node in _module_level(tree.body):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            defined[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defined[target.id] = node
                    if target.id == "__all__" and node.value is not None:
                        exported = set(ast.literal_eval(node.value))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imports[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imports[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0],
                    None,
                )
    return Module(name, tree, text.splitlines(), defined, imports, exported)


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    # Module statements, and those under `if TYPE_CHECKING:` (names annotations use).
    for node in body:
        if isinstance(node, ast.If):
            yield from _module_level(node.body)
        else:
            yield node


@dataclass(frozen=True)
class Origin:
    """Where a name an annotation uses is defined: ``module`` and ``name`` (None: the
    module itself), and the public module it is best imported from."""

    module: str
    name: str | None
    import_from: str


def origin(module_name: str, name: str) -> Origin:
    """Where ``name``, as module ``module_name`` sees it, comes from."""
    chain: list[str] = []
    current, wanted = module_name, name
    while True:
        chain.append(current)
        source = module(current)
        if wanted in source.defined:
            return Origin(current, wanted, _import_from(chain, wanted))
        found = source.imports.get(wanted)
        if found is None:
            if hasattr(builtins, wanted):
                return Origin("builtins", wanted, "builtins")
            if wanted in _OWN:
                # The sync face's own annotations (CALLBACKS) may use what the module does not.
                own_module, own_name = _OWN[wanted]
                return Origin(own_module, own_name, own_module)
            raise GenerationError(f"cannot tell where {name} (used in {module_name}) is from")
        imported_module, imported_name = found
        if imported_name is None:
            return Origin(imported_module, None, imported_module)
        if not imported_module.startswith("agency_data"):
            return Origin(imported_module, imported_name, imported_module)
        current, wanted = imported_module, imported_name


def _import_from(chain: list[str], name: str) -> str:
    # The defining module, unless it is private: then the nearest module that exports it.
    defining = chain[-1]
    if not any(part.startswith("_") for part in defining.split(".")):
        return defining
    for candidate in reversed(chain[:-1]):
        if name in module(candidate).exported:
            return candidate
    # Or the package above it that re-exports it (agency_data.migrations for ._model's).
    parts = defining.split(".")
    for end in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:end])
        if not any(p.startswith("_") for p in parts[:end]) and name in module(package).exported:
            return package
    return defining


def runtime(where: Origin) -> Any:
    """The object an origin names."""
    imported = importlib.import_module(where.module)
    return imported if where.name is None else getattr(imported, where.name)


# -- which classes get twins -----------------------------------------------------------------


def _class_node(cls: type) -> tuple[Module, ast.ClassDef]:
    source = module(cls.__module__)
    node = source.defined.get(cls.__name__)
    if not isinstance(node, ast.ClassDef):
        raise GenerationError(f"no class {cls.__name__} in {cls.__module__}")
    return source, node


def _is_async_api(cls: type) -> bool:
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in _KEPT_DUNDERS:
            continue
        target = member.fget if isinstance(member, property) else member
        wrapped = getattr(target, "__wrapped__", target)
        if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(wrapped):
            return True
    return False


def _ours(cls: type) -> bool:
    return cls.__module__.startswith("agency_data") and not cls.__module__.startswith(
        "agency_data.sync"
    )


@dataclass
class Twin:
    """A class to generate: the async class and what its body holds."""

    cls: type
    source: Module
    node: ast.ClassDef
    bases: list[type] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.cls.__name__


def discover() -> list[Twin]:
    """Every class that gets a twin, bases before the classes built on them."""
    wanted: dict[type, Twin] = {}
    queue: list[type] = [runtime(Origin(ROOT[0], ROOT[1], ROOT[0]))]
    queue += [runtime(Origin(m, n, m)) for m, n in sorted(ALSO_WRAPPED)]
    while queue:
        cls = queue.pop()
        if cls in wanted:
            continue
        source, node = _class_node(cls)
        twin = wanted[cls] = Twin(cls, source, node)
        twin.bases = [base for base in cls.__bases__ if _ours(base) and _has_public(base)]
        queue += twin.bases
        for annotation, where in _member_types(twin):
            for name in _names(annotation):
                try:
                    found = runtime(origin(where.name, name))
                except GenerationError:
                    continue
                if (
                    isinstance(found, type)
                    and _ours(found)
                    and found not in wanted
                    and (_is_async_api(found) or (found.__module__, found.__name__) in ALSO_WRAPPED)
                    and (found.__module__, found.__name__) not in NOT_WRAPPED
                ):
                    queue.append(found)
    ordered: list[Twin] = []
    placed: set[type] = set()

    def place(cls: type) -> None:
        if cls in placed:
            return
        for base in wanted[cls].bases:
            place(base)
        placed.add(cls)
        ordered.append(wanted[cls])

    for cls in sorted(wanted, key=lambda c: (c.__module__, c.__name__)):
        place(cls)
    names = [t.name for t in ordered]
    if len(set(names)) != len(names):
        raise GenerationError(f"two wrapped classes share a name: {sorted(names)}")
    return ordered


def _has_public(cls: type) -> bool:
    _, node = _class_node(cls)
    return any(_public(n) for n in node.body) or bool(_instance_attributes(node))


def _public(node: ast.stmt) -> bool:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return not node.name.startswith("_") or node.name in _KEPT_DUNDERS
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return not node.target.id.startswith("_")
    return False


def _member_types(twin: Twin) -> Iterator[tuple[ast.expr, Module]]:
    """The annotations of what the class's members give (returns, attributes)."""
    for node in twin.node.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _public(node):
            if node.returns is not None:
                yield node.returns, twin.source
        elif isinstance(node, ast.AnnAssign) and _public(node):
            yield node.annotation, twin.source
    for attribute in _instance_attributes(twin.node, twin.source):
        found = _attribute_type(twin, attribute, strict=False)
        if found is not None:
            yield found


def _names(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            try:
                yield from _names(ast.parse(sub.value, mode="eval"))
            except SyntaxError:
                continue


# -- instance attributes -------------------------------------------------------------------


@dataclass
class Attribute:
    """A public attribute set in ``__init__`` (``self.name = value``)."""

    name: str
    value: ast.expr | None
    annotation: ast.expr | None
    doc: str | None
    init: ast.FunctionDef


def _instance_attributes(node: ast.ClassDef, source: Module | None = None) -> list[Attribute]:
    init = next(
        (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
    )
    if init is None:
        return []
    found: dict[str, Attribute] = {}
    body = init.body
    for index, stmt in enumerate(body):
        if isinstance(stmt, ast.Assign):
            targets, annotation = stmt.targets, None
        elif isinstance(stmt, ast.AnnAssign):
            targets, annotation = [stmt.target], stmt.annotation
        else:
            continue
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and not target.attr.startswith("_")
                and target.attr not in found
            ):
                doc = _comment_doc(source, stmt) if source is not None else None
                following = body[index + 1] if index + 1 < len(body) else None
                if (
                    isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    doc = following.value.value
                found[target.attr] = Attribute(target.attr, stmt.value, annotation, doc, init)
    return list(found.values())


def _comment_doc(source: Module, stmt: ast.stmt) -> str | None:
    """The ``#:`` comment lines just above ``stmt`` (an attribute's documentation)."""
    found: list[str] = []
    line = stmt.lineno - 2
    while line >= 0 and source.lines[line].strip().startswith("#:"):
        found.insert(0, source.lines[line].strip().removeprefix("#:").strip())
        line -= 1
    return " ".join(found) or None


def _attribute_type(
    twin: Twin, attribute: Attribute, *, strict: bool = True
) -> tuple[ast.expr, Module] | None:
    """The type of an attribute: its annotation, the annotation of the parameter it copies,
    the class it is made of, or the return annotation of the function that makes it."""
    if attribute.annotation is not None:
        return attribute.annotation, twin.source
    value = attribute.value
    if isinstance(value, ast.Name):
        for arg in [*attribute.init.args.args, *attribute.init.args.kwonlyargs]:
            if arg.arg == value.id and arg.annotation is not None:
                return arg.annotation, twin.source
    if isinstance(value, ast.Constant) and type(value.value) in (int, float, str, bool):
        return ast.Name(type(value.value).__name__), twin.source
    if isinstance(value, ast.Call):
        func = value.func
        root = func
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and not hasattr(builtins, root.id):
            try:
                made = _evaluate(func, twin.source)
            except GenerationError:
                made = None
            if isinstance(made, type):
                return func, twin.source
            if made is not None and callable(made):
                returns = _return_node(made)
                if returns is not None:
                    return returns
    if strict:
        raise GenerationError(
            f"cannot tell the type of {twin.cls.__module__}.{twin.name}.{attribute.name}: "
            f"annotate it where __init__ sets it (self.{attribute.name}: SomeType = ...)"
        )
    return None


def _evaluate(node: ast.expr, source: Module) -> Any:
    if isinstance(node, ast.Name):
        return runtime(origin(source.name, node.id))
    if isinstance(node, ast.Attribute):
        return getattr(_evaluate(node.value, source), node.attr)
    raise GenerationError(f"cannot evaluate {ast.unparse(node)}")


def _return_node(fn: Any) -> tuple[ast.expr, Module] | None:
    defining = getattr(fn, "__module__", None)
    if not isinstance(defining, str) or not defining.startswith("agency_data"):
        return None
    source = module(defining)
    node = source.defined.get(fn.__name__)
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
        return node.returns, source
    return None


# -- names in the generated module -----------------------------------------------------------


class Names:
    """The names the generated module imports, each under one local name."""

    def __init__(self, twins: list[Twin]) -> None:
        self.wrapped = {(t.cls.__module__, t.name): t.name for t in twins}
        self._local: dict[tuple[str, str | None], str] = {}
        self._taken: dict[str, tuple[str, str | None]] = {t.name: ("<twin>", t.name) for t in twins}
        # local name -> (module imported from, name there or None for the module itself)
        self._imports: dict[str, tuple[str, str | None]] = {}
        for mod, name in _OWN.values():
            self.use(Origin(mod, name, mod))

    def use(self, where: Origin, alias: str | None = None) -> str:
        """The local name of ``where`` (imported under it): a twin's for a wrapped class; a
        module under ``alias``, the name the source knows it by (``npt``)."""
        key = (where.module, where.name)
        if where.module == "builtins" and where.name is not None:
            return where.name
        if key in self.wrapped:
            return self.wrapped[key]
        if key in self._local:
            return self._local[key]
        wanted = where.name or alias or where.module.split(".")[-1]
        return self._take(key, wanted, where)

    def use_async(self, twin: Twin) -> str:
        """The local name of the async class ``twin`` stands for."""
        key = ("<async>", f"{twin.cls.__module__}.{twin.name}")
        if key in self._local:
            return self._local[key]
        where = Origin(
            twin.cls.__module__, twin.name, _import_from([twin.cls.__module__], twin.name)
        )
        return self._take(key, f"Async{twin.name}", where)

    def _take(self, key: tuple[str, str | None], wanted: str, where: Origin) -> str:
        local = wanted
        if local in self._taken:
            local = f"{where.module.split('.')[-1]}_{wanted}"
        if local in self._taken:
            raise GenerationError(f"two names to import as {local}: {key}, {self._taken[local]}")
        self._taken[local] = key
        self._local[key] = local
        self._imports[local] = (where.import_from, where.name)
        return local

    def lines(self) -> list[str]:
        """The import statements (ruff sorts them)."""
        out = []
        for local, (mod, name) in sorted(self._imports.items()):
            if name is None:
                if "." in mod:
                    parent, leaf = mod.rsplit(".", 1)
                    out.append(
                        f"from {parent} import {leaf}" + ("" if local == leaf else f" as {local}")
                    )
                else:
                    out.append(f"import {mod}" + ("" if local == mod else f" as {local}"))
            else:
                out.append(f"from {mod} import {name}" + ("" if local == name else f" as {local}"))
        return out


class _Rename(ast.NodeTransformer):
    """An annotation or default of ``source``'s, with its names made the generated module's."""

    def __init__(self, names: Names, source: Module, members: set[str]) -> None:
        self.names = names
        self.source = source
        self.members = members

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in ("None", "True", "False"):
            return node
        where = origin(self.source.name, node.id)
        if where.module == "builtins" and node.id in self.members:
            # A method of the class shadows the builtin inside its body.
            local = self.names.use(Origin("builtins", None, "builtins"))
            return ast.copy_location(ast.Attribute(ast.Name(local), node.id), node)
        return ast.copy_location(ast.Name(self.names.use(where, node.id)), node)

    def visit_Constant(self, node: ast.Constant) -> ast.expr:
        if isinstance(node.value, str) and self.in_annotation:
            parsed = ast.parse(node.value, mode="eval").body
            return self.visit(parsed)  # type: ignore[no-any-return]
        return node

    in_annotation = True


def _rename(
    node: ast.expr, source: Module, names: Names, members: set[str], annotation: bool = True
) -> ast.expr:
    renamer = _Rename(names, source, members)
    renamer.in_annotation = annotation
    return renamer.visit(copy.deepcopy(node))  # type: ignore[no-any-return]


# -- members -------------------------------------------------------------------------------


@dataclass
class Context:
    """What emitting one class's members needs."""

    twin: Twin
    names: Names
    members: set[str]

    def rename(self, node: ast.expr, source: Module | None = None) -> ast.expr:
        return _rename(node, source or self.twin.source, self.names, self.members)

    def wrapped_name(self, node: ast.expr, source: Module | None = None) -> str | None:
        """The twin's name when ``node`` names a wrapped class."""
        if isinstance(node, ast.Name):
            where = origin((source or self.twin.source).name, node.id)
            if where.name is None:
                return None
            return self.names.wrapped.get((where.module, where.name))
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return self.wrapped_name(ast.parse(node.value, mode="eval").body, source)
        return None

    def mentions_wrapped(self, node: ast.expr, source: Module | None = None) -> bool:
        for name in _names(node):
            try:
                where = origin((source or self.twin.source).name, name)
            except GenerationError:
                continue
            if (where.module, where.name) in self.names.wrapped:
                return True
        return False


def _decorators(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    found = set()
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Name):
            found.add(decorator.id)
        elif isinstance(decorator, ast.Attribute):
            found.add(decorator.attr)
    return found


def _has_yield(node: ast.AsyncFunctionDef) -> bool:
    stack: list[ast.AST] = list(node.body)
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Yield | ast.YieldFrom):
            return True
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        stack.extend(ast.iter_child_nodes(current))
    return False


def _first_paragraph(
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | str | None,
) -> str | None:
    if node is None:
        return None
    doc = inspect.cleandoc(node) if isinstance(node, str) else ast.get_docstring(node)
    if not doc:
        return None
    return doc.split("\n\n")[0].strip()


_SYNC_WORDS = [
    (re.compile(r"\basync with\b"), "with"),
    (re.compile(r"\basync for\b"), "for"),
    (re.compile(r"\bawait (?=\S)"), ""),
    (re.compile(r"\baclose\(\)"), "close()"),
    (re.compile(r":meth:`aclose`"), ":meth:`close`"),
]


def _sync_doc(text: str) -> str:
    for pattern, replacement in _SYNC_WORDS:
        text = pattern.sub(replacement, text)
    return text


def _docstring(text: str, indent: str) -> ast.Expr:
    lines = text.splitlines()
    body = lines[0] + "".join(f"\n{indent}{line}" if line else "\n" for line in lines[1:])
    if "\n\n" in text.strip():
        body += f"\n{indent}"  # several paragraphs: the closing quotes on a line of their own
    return ast.Expr(ast.Constant(body))


def _arguments(
    ctx: Context, node: ast.FunctionDef | ast.AsyncFunctionDef
) -> tuple[ast.arguments, str]:
    """The sync signature's arguments, and the call forwarding them to the async method."""
    args = copy.deepcopy(node.args)
    forwarded: list[str] = []

    def convert(arg: ast.arg, default: ast.expr | None) -> str:
        name = arg.arg
        if arg.annotation is None:
            raise GenerationError(f"{ctx.twin.name}.{node.name}: parameter {name} has no type")
        written = ast.unparse(arg.annotation)
        if written in CALLBACKS:
            sync_annotation, handed = CALLBACKS[written]
            arg.annotation = ctx.rename(ast.parse(sync_annotation, mode="eval").body)
            return handed.format(arg=name)
        if "Iterable[" in written:
            # A caller's generator runs its own code as it is read: read in the caller's
            # thread (whole, or a chunk at a time for a stream), never on the loop's.
            arg.annotation = ctx.rename(arg.annotation)
            feed = "feed_stream" if "AsyncIterable[" in written else "feed"
            return f"self._portal.{feed}({name})"
        if written not in PASSED_AS_IS and _mentions_callable(arg.annotation, ctx.twin.source):
            raise GenerationError(
                f"{ctx.twin.name}.{node.name}: parameter {name} takes a function "
                f"({written}); say how the sync face passes it: CALLBACKS (the layer awaits "
                "it: it runs in the caller's thread) or PASSED_AS_IS (called on the loop)"
            )
        if ctx.mentions_wrapped(arg.annotation):
            raise GenerationError(
                f"{ctx.twin.name}.{node.name}: parameter {name} takes a wrapped class "
                f"({written}), which the sync face would have to unwrap: teach the generator"
            )
        arg.annotation = ctx.rename(arg.annotation)
        return name

    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(
        args.defaults
    )
    for arg, default in zip(positional[1:], defaults[1:], strict=True):
        forwarded.append(convert(arg, default))
    if args.vararg is not None:
        forwarded.append("*" + convert(args.vararg, None))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        forwarded.append(f"{arg.arg}={convert(arg, default)}")
    if args.kwarg is not None:
        forwarded.append("**" + convert(args.kwarg, None))
    args.defaults = [
        _rename(d, ctx.twin.source, ctx.names, ctx.members, annotation=False) for d in args.defaults
    ]
    args.kw_defaults = [
        None if d is None else _rename(d, ctx.twin.source, ctx.names, ctx.members, False)
        for d in args.kw_defaults
    ]
    return args, ", ".join(forwarded)


def _mentions_callable(node: ast.expr, source: Module, depth: int = 0) -> bool:
    for name in _names(node):
        if name in ("Callable", "Awaitable", "Coroutine"):
            return True
        if depth > 3:
            continue
        try:
            where = origin(source.name, name)
        except GenerationError:
            continue
        if where.name is None or not where.module.startswith("agency_data"):
            continue
        defined = module(where.module).defined.get(where.name)
        if (
            isinstance(defined, ast.Assign | ast.AnnAssign)
            and defined.value is not None
            and _mentions_callable(defined.value, module(where.module), depth + 1)
        ):
            return True
    return False


def _subscript(node: ast.expr) -> tuple[str, list[ast.expr]] | None:
    """``Name[a, b]`` -> ("Name", [a, b])."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _subscript(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name | ast.Attribute):
        head = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
        inner = node.slice
        items = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
        return head, items
    return None


def _optional(node: ast.expr) -> ast.expr | None:
    """``X | None`` -> X."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        if isinstance(node.right, ast.Constant) and node.right.value is None:
            return node.left
        if isinstance(node.left, ast.Constant) and node.left.value is None:
            return node.right
    return None


@dataclass
class Emitted:
    """One member of a twin: its functions (a property's getter and setter, overloads)."""

    name: str
    functions: list[ast.stmt]


def _function(
    name: str,
    args: ast.arguments,
    returns: ast.expr | None,
    doc: str | None,
    body: str,
    decorators: list[str] | None = None,
) -> ast.FunctionDef:
    statements: list[ast.stmt] = []
    if doc:
        statements.append(_docstring(doc, " " * 8))
    statements += ast.parse(body).body
    fn = ast.FunctionDef(
        name=name,
        args=args,
        body=statements,
        decorator_list=[ast.parse(d, mode="eval").body for d in decorators or []],
        returns=returns,
        lineno=0,
    )
    return fn


def _self_only() -> ast.arguments:
    return ast.arguments(
        posonlyargs=[], args=[ast.arg("self")], kwonlyargs=[], kw_defaults=[], defaults=[]
    )


def emit_method(
    ctx: Context,
    node: ast.FunctionDef | ast.AsyncFunctionDef,
    overloads: list[ast.FunctionDef | ast.AsyncFunctionDef],
) -> Emitted:
    """The sync twin of one method (with its overloads)."""
    twin = ctx.twin
    qualified = f"{twin.name}.{node.name}"
    decorators = _decorators(node)
    sync_name = _KEPT_DUNDERS.get(node.name) or RENAMED.get(node.name, node.name)
    doc = _first_paragraph(node)
    doc = _sync_doc(doc) if doc else None
    if decorators & {"staticmethod", "classmethod", "setter"}:
        raise GenerationError(f"{qualified}: {decorators} methods are not mapped yet")
    if node.returns is None:
        raise GenerationError(f"{qualified} has no return annotation")
    if "property" in decorators:
        return Emitted(sync_name, [_property(ctx, node.name, node.returns, twin.source, doc)])
    if node.name == "__aenter__":
        wrapped = ctx.wrapped_name(node.returns)
        is_self = isinstance(node.returns, ast.Name) and node.returns.id == "Self"
        if not is_self and wrapped != twin.name:
            raise GenerationError(f"{qualified} gives something else than the object itself")
        body = "self._portal.aenter(self._aio)\nreturn self"
        return Emitted(sync_name, [_function(sync_name, _self_only(), ast.Name("Self"), doc, body)])
    if node.name == "__aexit__":
        args, forwarded = _arguments(ctx, node)
        exits = f"self._portal.aexit(self._aio, {forwarded})"
        exit_returns: ast.expr = ast.Name("bool")
        if isinstance(node.returns, ast.Constant) and node.returns.value is None:
            body, exit_returns = exits, node.returns
        else:
            body = f"return {exits}"
        return Emitted(sync_name, [_function(sync_name, args, exit_returns, doc, body)])
    functions: list[ast.stmt] = []
    for overload in overloads:
        args, forwarded = _arguments(ctx, overload)
        returns, _ = _sync_return(ctx, overload, "...")
        stub = _function(sync_name, args, returns, None, "...", ["overload"])
        functions.append(stub)
    args, forwarded = _arguments(ctx, node)
    returns, body = _sync_return(ctx, node, f"self._aio.{node.name}({forwarded})")
    if overloads:
        # The implementation's arguments (unions of the overloads') may match no one overload
        # of the async method's: it calls it untyped, and the stubs above give the types.
        value = body.removeprefix("return ").replace("self._aio.", "aio.", 1)
        body = f"aio: Any = self._aio\nreturn cast({ast.unparse(returns)!r}, {value})"
    functions.append(_function(sync_name, args, returns, doc, body))
    return Emitted(sync_name, functions)


def _sync_return(
    ctx: Context, node: ast.FunctionDef | ast.AsyncFunctionDef, call: str
) -> tuple[ast.expr, str]:
    """The sync method's return annotation and body, for the async method's kind."""
    qualified = f"{ctx.twin.name}.{node.name}"
    returns = node.returns
    assert returns is not None
    decorators = _decorators(node)
    is_async = isinstance(node, ast.AsyncFunctionDef)
    subscript = _subscript(returns)
    if "asynccontextmanager" in decorators:
        if subscript is None or subscript[0] not in _ASYNC_ITERATORS:
            raise GenerationError(f"{qualified}: an async context manager typed {returns}")
        value = subscript[1][0]
        wrapped = ctx.wrapped_name(value)
        inner = ast.Name(wrapped) if wrapped else _plain(ctx, value, qualified)
        annotation = ast.Subscript(ast.Name("AbstractContextManager"), inner)
        handed = f"self._portal.enter({call}, {wrapped}._of)" if wrapped else None
        return annotation, f"return {handed or f'self._portal.enter({call})'}"
    if (isinstance(node, ast.AsyncFunctionDef) and _has_yield(node)) or (
        not is_async and subscript is not None and subscript[0] in _ASYNC_ITERATORS
    ):
        if subscript is None or subscript[0] not in _ASYNC_ITERATORS:
            raise GenerationError(f"{qualified}: an async generator typed {ast.unparse(returns)}")
        item = _plain(ctx, subscript[1][0], qualified)
        annotation = ast.Subscript(
            ast.Name("Generator"), ast.Tuple([item, ast.Constant(None), ast.Constant(None)])
        )
        return annotation, f"return self._portal.iterate({call})"
    if not is_async and subscript is not None and subscript[0] == "AbstractContextManager":
        item = _plain(ctx, subscript[1][0], qualified)
        return ast.Subscript(ast.Name("AbstractContextManager"), item), (
            f"return self._portal.using({call})"
        )
    if isinstance(returns, ast.Name) and returns.id == "Self":
        # Another view of the same kind (collection.with_embedder(...)): its twin.
        waited = f"self._portal.call({call})" if is_async else call
        return ast.Name("Self"), f"return type(self)._of({waited}, self._portal)"
    wrapped = ctx.wrapped_name(returns)
    optional = _optional(returns)
    wrapped_optional = ctx.wrapped_name(optional) if optional is not None else None
    if is_async:
        waited = f"self._portal.call({call})"
    elif wrapped or wrapped_optional:
        # A factory: it only makes the object (a closed front end refuses, in its own words).
        waited = call.replace("self._aio.", "self._live().", 1)
    else:
        # A plain method: run where the async object's state lives.
        head, _, rest = call.partition("(")
        waited = f"self._portal.run_sync({head}" + (f", {rest}" if rest != ")" else ")")
    if wrapped:
        return ast.Name(wrapped), f"return {wrapped}._of({waited}, self._portal)"
    if wrapped_optional:
        return (
            ast.BinOp(ast.Name(wrapped_optional), ast.BitOr(), ast.Constant(None)),
            f"made = {waited}\n"
            f"return None if made is None else {wrapped_optional}._of(made, self._portal)",
        )
    return _plain(ctx, returns, qualified), f"return {waited}"


def _plain(ctx: Context, node: ast.expr, qualified: str, source: Module | None = None) -> ast.expr:
    """An annotation copied as it is: it may not hold a wrapped class (which would need a
    twin the generator does not make inside containers)."""
    if ctx.mentions_wrapped(node, source):
        raise GenerationError(
            f"{qualified} gives {ast.unparse(node)}: a wrapped class inside another type; "
            "teach the generator to wrap it"
        )
    return ctx.rename(node, source)


def _property(
    ctx: Context,
    name: str,
    annotation: ast.expr,
    source: Module,
    doc: str | None,
    settable: bool = False,
) -> ast.stmt:
    qualified = f"{ctx.twin.name}.{name}"
    wrapped = ctx.wrapped_name(annotation, source)
    optional = _optional(annotation)
    wrapped_optional = ctx.wrapped_name(optional, source) if optional is not None else None
    if wrapped:
        returns: ast.expr = ast.Name(wrapped)
        body = f"return self._child({name!r}, self._live().{name}, {wrapped})"
    elif wrapped_optional:
        returns = ast.BinOp(ast.Name(wrapped_optional), ast.BitOr(), ast.Constant(None))
        body = (
            f"value = self._aio.{name}\n"
            f"return None if value is None else {wrapped_optional}._of(value, self._portal)"
        )
    else:
        returns = _plain(ctx, annotation, qualified, source)
        body = f"return self._aio.{name}"
    getter = _function(name, _self_only(), returns, doc, body, ["property"])
    return getter


def _setter(ctx: Context, name: str, annotation: ast.expr, source: Module) -> ast.stmt:
    args = _self_only()
    args.args.append(ast.arg("value", _plain(ctx, annotation, name, source)))
    return _function(
        name, args, ast.Constant(None), None, f"self._aio.{name} = value", [f"{name}.setter"]
    )


def emit_attribute(ctx: Context, attribute: Attribute) -> Emitted:
    """A property reading (and, unless it is a twin, writing) an attribute set in __init__."""
    typed = _attribute_type(ctx.twin, attribute)
    assert typed is not None
    annotation, source = typed
    doc = _first_paragraph(attribute.doc) if attribute.doc else None
    if doc is None:
        doc = f"The async object's ``{attribute.name}``."
    getter = _property(ctx, attribute.name, annotation, source, _sync_doc(doc))
    functions = [getter]
    if f"{ctx.twin.name}.{attribute.name}" in SETTABLE:
        functions.append(_setter(ctx, attribute.name, annotation, source))
    return Emitted(attribute.name, functions)


# -- classes -------------------------------------------------------------------------------


def emit_class(twin: Twin, names: Names, inherited: set[str]) -> tuple[ast.ClassDef, set[str]]:
    """The twin of one class; also the public names it (and its bases) define."""
    node = twin.node
    by_name: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    order: list[str] = []
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and _public(stmt):
            if stmt.name not in by_name:
                order.append(stmt.name)
            by_name.setdefault(stmt.name, []).append(stmt)
    attributes = [a for a in _instance_attributes(node, twin.source) if a.name not in by_name]
    # Attributes the class declares for its subclasses to set (``tenant: str``).
    declared = {
        stmt.target.id: stmt
        for stmt in node.body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and _public(stmt)
    }
    members = set(order) | {a.name for a in attributes} | set(declared)
    ctx = Context(twin, names, members | {RENAMED.get(m, m) for m in members})
    body: list[ast.stmt] = []
    doc = _first_paragraph(node) or ""
    module_path = f"{twin.cls.__module__}.{twin.name}"
    body.append(
        _docstring(f"Synchronous twin of :class:`{module_path}`.\n\n{_sync_doc(doc)}", " " * 4)
    )
    is_root = twin.cls.__module__ == ROOT[0] and twin.name == ROOT[1]
    if not is_root:
        body.append(ast.parse("__slots__ = ()").body[0])
    async_name = names.use_async(twin)
    body.append(ast.AnnAssign(ast.Name("_aio"), ast.Name(async_name), None, simple=1))
    body.append(ast.parse(f"_aio_type: ClassVar[type[Any]] = {async_name}").body[0])
    if is_root:
        body += _root_members(ctx, async_name)
    aio = _function(
        "aio",
        _self_only(),
        ast.Name(async_name),
        "The async object this one stands for (for async code, on the portal's loop).",
        "return self._aio",
        ["property"],
    )
    body.append(aio)
    emitted: list[Emitted] = []
    for name, stmt in declared.items():
        if f"{twin.name}.{name}" in EXCLUDED or name in by_name:
            continue
        functions: list[ast.stmt] = [
            _property(ctx, name, stmt.annotation, twin.source, f"The async object's ``{name}``.")
        ]
        if f"{twin.name}.{name}" in SETTABLE:
            functions.append(_setter(ctx, name, stmt.annotation, twin.source))
        emitted.append(Emitted(name, functions))
    for attribute in attributes:
        if f"{twin.name}.{attribute.name}" in EXCLUDED:
            continue
        if attribute.name in declared:
            continue
        emitted.append(emit_attribute(ctx, attribute))
    for name in order:
        if f"{twin.name}.{name}" in EXCLUDED:
            continue
        if is_root and name in ("aclose", "__aenter__", "__aexit__"):
            continue  # the root's lifecycle also owns the portal (_root_members)
        candidates = by_name[name]
        overloads = [f for f in candidates if "overload" in _decorators(f)]
        implementation = [f for f in candidates if "overload" not in _decorators(f)]
        if len(implementation) != 1:
            raise GenerationError(f"{twin.name}.{name}: {len(implementation)} implementations")
        emitted.append(emit_method(ctx, implementation[0], overloads))
    for item in emitted:
        body += item.functions
    bases: list[ast.expr] = [ast.Name(base.__name__) for base in twin.bases]
    cls = ast.ClassDef(
        name=twin.name,
        bases=bases or [ast.Name("Wrapper")],
        keywords=[],
        body=body,
        decorator_list=[],
    )
    defined = inherited | {e.name for e in emitted}
    return cls, defined


def _root_members(ctx: Context, async_name: str) -> list[ast.stmt]:
    """The root's own lifecycle: it makes its portal (a private loop), and closes it."""
    init = next(
        n for n in ctx.twin.node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"
    )
    args, forwarded = _arguments(ctx, init)
    aclose = next(
        n for n in ctx.twin.node.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "aclose"
    )
    name = ctx.twin.name
    source = f'''
class _Root:
    __slots__ = ("_owns_portal",)
    _owns_portal: bool

    def __init__(self) -> None:
        """Make the layer (not connected yet: ``connect()``, or ``with``) and its portal, an
        event loop of its own in a daemon thread. Arguments: as the async {name}'s."""
        portal = Portal.start("agency-data-sync")
        try:
            aio = {async_name}({forwarded})
        except BaseException:
            portal.close()
            raise
        Wrapper.__init__(self, aio, portal)
        self._owns_portal = True

    @classmethod
    def _of(cls, aio: Any, portal: Portal) -> Self:
        made = super()._of(aio, portal)
        made._owns_portal = False
        return made

    @classmethod
    def wrap(cls, aio: {async_name}, portal: Portal) -> Self:
        """The synchronous face of ``aio``, an async {name} on the loop ``portal`` enters;
        closing it closes ``aio``, not the portal."""
        cls._check(aio, portal)
        return cls._of(aio, portal)

    def __enter__(self) -> Self:
        """Connect; leaving the block closes the layer and its portal."""
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """{_sync_doc(_first_paragraph(aclose) or "")}

        Then the portal's loop stops (when the layer made it): any later call raises UsageError.
        """
        portal = self._portal
        if portal.closed:
            return
        try:
            portal.call(self._aio.aclose())
        finally:
            if self._owns_portal:
                portal.close()
'''
    parsed = ast.parse(source).body[0]
    assert isinstance(parsed, ast.ClassDef)
    members = parsed.body
    for member in members:
        if isinstance(member, ast.FunctionDef) and member.name == "__init__":
            member.args = args
    return members


def _check_complete(twins: list[Twin], emitted: dict[str, set[str]]) -> None:
    """Every public member of every async class has a twin, or a reason in EXCLUDED."""
    for twin in twins:
        for name, member in inspect.getmembers(twin.cls):
            if name.startswith("_") and name not in _KEPT_DUNDERS:
                continue
            if not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            sync_name = _KEPT_DUNDERS.get(name) or RENAMED.get(name, name)
            if f"{twin.name}.{name}" in EXCLUDED or any(
                f"{base.__name__}.{name}" in EXCLUDED for base in twin.cls.__mro__
            ):
                continue
            if sync_name not in emitted[twin.name] and name not in emitted[twin.name]:
                raise GenerationError(
                    f"{twin.cls.__module__}.{twin.name}.{name} has no sync twin (it is "
                    "defined where the generator does not look); move it into a class body or "
                    "add it to EXCLUDED with the reason"
                )


# -- the module ----------------------------------------------------------------------------

_HEADER = '''"""The synchronous twins of the async classes (see :mod:`agency_data.sync`).

GENERATED from the async classes' source by agency_data/sync/_generate.py: do not edit;
run ``{command}`` after changing the async API.

Left out of the sync face: {excluded}.
"""

from __future__ import annotations
'''


def generate() -> str:
    """The text of ``_api.py`` for the async classes as they are now (ruff-formatted)."""
    twins = discover()
    names = Names(twins)
    classes: list[ast.stmt] = []
    emitted: dict[str, set[str]] = {}
    for twin in twins:
        inherited: set[str] = set()
        for base in twin.bases:
            inherited |= emitted[base.__name__]
        cls, defined = emit_class(twin, names, inherited)
        emitted[twin.name] = defined | {
            n
            for n in ("close", "__enter__", "__exit__")
            if twin.cls.__module__ == ROOT[0] and twin.name == ROOT[1]
        }
        classes.append(cls)
    _check_complete(twins, emitted)
    excluded = "; ".join(f"``{k}``, {v}" for k, v in sorted(EXCLUDED.items()))
    text = _HEADER.format(command=COMMAND, excluded="\n".join(textwrap.wrap(excluded, 95)))
    text += "\n".join(names.lines()) + "\n\n"
    text += "__all__ = [" + ", ".join(repr(t.name) for t in sorted(twins, key=lambda t: t.name))
    text += "]\n\n"
    text += "\n\n".join(ast.unparse(ast.fix_missing_locations(cls)) for cls in classes) + "\n"
    return _ruff(text)


def _ruff(text: str) -> str:
    path = str(TARGET)
    for command in (
        ["check", "--fix", "--select", "I,F401,UP", "--quiet", "--stdin-filename", path, "-"],
        ["format", "--quiet", "--stdin-filename", path, "-"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command],
            input=text,
            capture_output=True,
            text=True,
            check=False,
            cwd=TARGET.parent.parent.parent,
        )
        if done.returncode not in (0, 1) or not done.stdout:
            raise GenerationError(f"ruff {command[0]} failed: {done.stderr}")
        text = done.stdout
    return text


def main(argv: list[str] | None = None) -> int:
    """Write ``_api.py`` (or, with ``--check``, only say whether it is current)."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if _api.py is stale")
    options = parser.parse_args(argv)
    text = generate()
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if options.check:
        if text != current:
            print(f"{TARGET} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if text != current:
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
