"""One config style for every estimator: a dataclass whose fields carry their help text.

    @dataclass
    class ScanConfig(Config):
        mode: Literal["detection", "search"] = field(default="detection", metadata={"help": "..."})

        def check(self) -> None:           # cross-field rules, one-line LMSanitatorError
            ...

Every instance is validated once, in ``__post_init__`` (``Literal`` options, then :meth:`check`);
:meth:`to_dict` / :meth:`from_dict` round-trip it through JSON (unknown keys are refused), and
:meth:`changed` names the fields set away from their defaults, so a report can tell a chosen value
from a default. The CLI reads defaults and help from the fields (:func:`option_default`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

from lmsanitator.core.errors import LMSanitatorError


def _literal_choices(tp) -> tuple | None:
    """The allowed values of ``Literal[...]`` or ``Literal[...] | None`` (None when not a Literal)."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    args = get_args(tp)
    if args and any(get_origin(a) is Literal for a in args):
        out: tuple = ()
        for a in args:
            out += get_args(a) if get_origin(a) is Literal else (None,) if a is type(None) else ()
        return out
    return None


class Config:
    """Mixin for dataclass configs (subclasses are ``@dataclass``)."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def _hints(cls) -> dict:
        return typing.get_type_hints(cls)

    def validate(self) -> None:
        hints = self._hints()
        for f in dataclasses.fields(self):
            choices = _literal_choices(hints.get(f.name))
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                shown = ", ".join(str(c) for c in choices if c is not None)
                raise LMSanitatorError(f"{type(self).__name__}.{f.name}: '{value}' is not one of {shown}")
        self.check()

    def check(self) -> None:
        """Cross-field rules of a subclass (raise :class:`LMSanitatorError` with one line)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise LMSanitatorError(f"{cls.__name__}: unknown option(s) {', '.join(unknown)}")
        return cls(**d)

    def changed(self) -> list[str]:
        """Names of the fields whose value differs from the field's default (what a user chose)."""
        out = []
        for f in dataclasses.fields(self):
            default = _default_of(f)
            if default is not dataclasses.MISSING and _plain(getattr(self, f.name)) != _plain(default):
                out.append(f.name)
        return out

    @classmethod
    def help(cls, name: str) -> str:
        return _field(cls, name).metadata.get("help", "")


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _field(cls, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field '{name}'")


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def option_default(cls, name: str):
    """The default of ``cls.name``: what the CLI offers, so a default lives in one place."""
    return _default_of(_field(cls, name))


def option_choices(cls, name: str) -> list | None:
    """The ``Literal`` values of ``cls.name`` (None when the field is not an option list)."""
    choices = _literal_choices(typing.get_type_hints(cls).get(name))
    return None if choices is None else [c for c in choices if c is not None]
