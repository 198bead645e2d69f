"""Strategy options from keyword values or CLI strings: one strict coercion for the API,
the CLI, the bench, the server and speech."""

from __future__ import annotations

import dataclasses
import numbers
import typing
from typing import Any

from paragen.errors import UnsupportedOptionError

# Spellings a boolean option accepts from the CLI (case-insensitive); anything else is an error,
# so a typo like "ture" never turns into a silent False.
BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert(strategy: str, key: str, kind: type, value: Any) -> Any:
    """``value`` as a ``kind`` (bool, int, float or str), from a Python value or a CLI string.

    Strict: an int option refuses 2.7 and "2.7", a bool option refuses 2 and "ture".
    """
    what = {bool: "a boolean (true/false, 1/0, yes/no)", int: "an integer", float: "a number",
            str: "a string"}.get(kind, kind.__name__)
    bad = UnsupportedOptionError(f"{strategy}: option {key} needs {what}, got {value!r}")
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() not in BOOLEAN_WORDS:
                raise bad
            return BOOLEAN_WORDS[text.lower()]
        try:
            return kind(text)
        except ValueError:
            raise bad from None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise bad
    return kind(value)


def make_options(cls: type, options: dict[str, Any]) -> Any:
    """Build a strategy's (or a bench peer's) frozen options from keyword values or CLI strings.

    Each value is checked against its field's type (see ``_convert``); the options
    dataclass's own ``__post_init__`` then checks ranges.
    """
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise UnsupportedOptionError(f"strategy '{cls.name}' has no option {', '.join(unknown)} (its options: {valid})")
    hints = typing.get_type_hints(cls.Options)
    return cls.Options(**{key: _convert(cls.name, key, hints[key], value) for key, value in options.items()})
