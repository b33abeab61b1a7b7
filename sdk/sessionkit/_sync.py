"""Synchronous classes made from the async ones, so the two APIs cannot drift: ``@sync_of(AsyncX)``
gives the decorated class every public member of ``AsyncX`` that it does not define itself.

- a coroutine method runs on the SDK's background loop (sessionkit._loop) and returns its result;
- an async generator method returns a blocking iterator over it;
- a plain method or a property is forwarded;
- instance attributes are read (and set) through to the async object.

Results are made synchronous on the way out (:func:`to_sync`): an async iterator becomes a blocking
iterator, an object of an async class with a sync face (an AsyncAgent, ``session.memory``) comes back
as that face, lists of them as lists of faces. Each generated method keeps the async method's name,
docstring and parameters (``functools.wraps`` and ``__signature__``), so ``help()`` and IDEs show
the same API; :func:`differences` lists what is not the same, for the test that guards it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Self, TypeVar

from sessionkit import _loop

A = TypeVar("A")
C = TypeVar("C", bound=type)

#: async class -> its sync face, for converting results.
_FACES: dict[type, type[SyncFacade[Any]]] = {}
#: Words of the async API's annotations and their sync counterparts (for signatures shown to users).
_RENAMES = (("AsyncIterator", "Iterator"), ("AsyncAgent", "Agent"), ("AsyncSession", "Session"))


class SyncFacade(Generic[A]):
    """The sync face of one async object (``_async``)."""

    _async: A

    @classmethod
    def _wrap(cls, inner: A) -> Self:
        face = cls.__new__(cls)
        object.__setattr__(face, "_async", inner)
        return face

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the class does not have: the async object's instance attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        return to_sync(getattr(self._async, name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._async, name, value)

    def __enter__(self) -> Self:
        enter = getattr(self._async, "__aenter__", None)
        if enter is not None:
            _loop.run(enter())
        return self

    def __exit__(self, *exc: Any) -> None:
        exit_ = getattr(self._async, "__aexit__", None)
        if exit_ is not None:
            _loop.run(exit_(*exc))

    def __repr__(self) -> str:
        return repr(self._async).replace("Async", "", 1)


def to_sync(value: Any) -> Any:
    """``value`` as the sync API returns it (see the module's docstring)."""
    for klass in type(value).__mro__:
        face = _FACES.get(klass)
        if face is not None:
            return face._wrap(value)
    if isinstance(value, AsyncIterator):
        return _loop.iterate(value)
    if isinstance(value, list):
        converted = [to_sync(v) for v in value]
        # The same list object when nothing changed: a list the caller mutates stays the object's own.
        return converted if any(a is not b for a, b in zip(converted, value, strict=True)) else value
    return value


def _sync_signature(fn: Callable[..., Any]) -> inspect.Signature:
    signature = inspect.signature(fn)
    annotation = signature.return_annotation
    if isinstance(annotation, str):
        for old, new in _RENAMES:
            annotation = annotation.replace(old, new)
        signature = signature.replace(return_annotation=annotation)
    return signature


def same_api(async_fn: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """For a sync method written by hand (it does more than forward): the async method's name,
    docstring and signature, so it still cannot drift from it unnoticed."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = functools.wraps(async_fn)(fn)
        wrapped.__signature__ = _sync_signature(async_fn)  # type: ignore[attr-defined]
        return wrapped

    return decorate


def _method(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(fn):

        def method(self: SyncFacade[Any], /, *args: Any, **kwargs: Any) -> Any:
            return _loop.iterate(getattr(self._async, name)(*args, **kwargs))

    elif inspect.iscoroutinefunction(fn):

        def method(self: SyncFacade[Any], /, *args: Any, **kwargs: Any) -> Any:
            return to_sync(_loop.run(getattr(self._async, name)(*args, **kwargs)))

    else:

        def method(self: SyncFacade[Any], /, *args: Any, **kwargs: Any) -> Any:
            return to_sync(getattr(self._async, name)(*args, **kwargs))

    return same_api(fn)(method)


def _property(name: str, prop: property) -> property:
    def get(self: SyncFacade[Any]) -> Any:
        return to_sync(getattr(self._async, name))

    return property(get, doc=prop.__doc__)


def _init(async_cls: type) -> Callable[..., None]:
    def __init__(self: SyncFacade[Any], /, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "_async", async_cls(*args, **kwargs))

    async_init: Any = vars(async_cls).get("__init__") or inspect.getattr_static(async_cls, "__init__")
    __init__.__doc__ = async_init.__doc__
    __init__.__signature__ = inspect.signature(async_init)  # type: ignore[attr-defined]
    return __init__


def public_members(cls: type) -> list[str]:
    """The public API of a class: its (and its bases') names not starting with "_"."""
    return sorted(name for name in dir(cls) if not name.startswith("_"))


def sync_of(async_cls: type, *, construct: bool = False) -> Callable[[C], C]:
    """Class decorator: fill the sync class with the async class's public API (see the module's
    docstring). ``construct``: ``SyncClass(...)`` takes the async class's arguments and builds the
    async object; otherwise sync objects only come from wrapping (``SyncClass._wrap(inner)``)."""

    def decorate(cls: C) -> C:
        own = set(vars(cls))
        for name in public_members(async_cls):
            if name in own:
                continue  # written by hand; the drift test still compares its signature
            member = inspect.getattr_static(async_cls, name)
            if isinstance(member, property):
                setattr(cls, name, _property(name, member))
            elif isinstance(member, (classmethod, staticmethod)):
                raise TypeError(f"{async_cls.__name__}.{name}: class and static methods have no sync form")
            elif callable(member):
                setattr(cls, name, _method(name, member))
            else:
                setattr(cls, name, member)
        if construct and "__init__" not in own:
            cls.__init__ = _init(async_cls)  # type: ignore[misc]
        _FACES[async_cls] = cls
        return cls

    return decorate


def differences(sync_cls: type, async_cls: type, *, constructor: bool = False) -> list[str]:
    """How the sync class's public API differs from the async class's: members missing on one side,
    parameters that differ, and a property on one side that is a method on the other."""
    problems: list[str] = []
    sync_names, async_names = set(public_members(sync_cls)), set(public_members(async_cls))
    problems += [f"{name}: missing from {sync_cls.__name__}" for name in sorted(async_names - sync_names)]
    problems += [f"{name}: not in {async_cls.__name__}" for name in sorted(sync_names - async_names)]
    names = sorted(sync_names & async_names) + (["__init__"] if constructor else [])
    for name in names:
        sync_member = inspect.getattr_static(sync_cls, name)
        async_member = inspect.getattr_static(async_cls, name)
        if isinstance(sync_member, property) != isinstance(async_member, property):
            problems.append(f"{name}: a property on one side only")
        elif callable(async_member) and not isinstance(async_member, property):
            if not callable(sync_member):
                problems.append(f"{name}: not callable in {sync_cls.__name__}")
                continue
            theirs = list(inspect.signature(async_member).parameters.values())
            ours = list(inspect.signature(sync_member).parameters.values())
            if [_shape(p) for p in theirs] != [_shape(p) for p in ours]:
                problems.append(f"{name}: parameters {ours} differ from {theirs}")
    return problems


def _shape(parameter: inspect.Parameter) -> tuple[str, Any, Any]:
    return parameter.name, parameter.kind, parameter.default
