"""The one set of argument checks used at construction, with one message style.

Where code runs: wherever an object is constructed (the training process, a worker unpickling a
solver); nothing here imports more than numpy.

Every refusal is a ``ValueError`` (a ``TypeError`` would say less: the value is the problem) that
reads ``"{owner}: {what} must be {requirement}, got {value!r}"`` (``owner:`` only when given), so
that a user who passed ``max_step_bytes=0`` reads what to pass instead. Integers: Python and numpy
integers are accepted alike, bools never (``True`` is not a count). Reals: Python and numpy
integers and floats, never bools, always finite.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "check_choice",
    "check_directory",
    "check_environment",
    "check_int",
    "check_optional_int",
    "check_optional_real",
    "check_real",
    "check_string",
    "check_template",
    "refuse",
]


def refuse(what: str, requirement: str, value: Any, owner: str = "") -> ValueError:
    """The error of every check: ``owner: what must be requirement, got value``."""
    prefix = f"{owner}: " if owner else ""
    return ValueError(f"{prefix}{what} must be {requirement}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(
    value: Any,
    what: str,
    minimum: int | None = None,
    owner: str = "",
    *,
    maximum: int | None = None,
    maximum_name: str = "",
) -> int:
    """``value`` as a Python int in ``[minimum, maximum]`` (either bound optional).

    ``maximum_name`` names where the upper bound comes from (``"capacity"``). The positional
    order (value, what, minimum, owner) is that of the helpers it replaces."""
    if minimum == 1 and maximum is None:
        requirement = "a positive integer"
    elif minimum == 0 and maximum is None:
        requirement = "a non-negative integer"
    elif maximum is None:
        requirement = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    else:
        high = f"{maximum_name} ({maximum})" if maximum_name else str(maximum)
        low = minimum if minimum is not None else "-inf"
        requirement = f"an integer between {low} and {high}"
    if not _is_int(value):
        raise refuse(what, requirement, value, owner)
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise refuse(what, requirement, value, owner)
    return v


def check_optional_int(
    value: Any, what: str, minimum: int | None = None, owner: str = "", **kw: Any
) -> int | None:
    """:func:`check_int`, or None."""
    if value is None:
        return None
    try:
        return check_int(value, what, minimum, owner, **kw)
    except ValueError as exc:
        raise ValueError(f"{exc.args[0].split(', got ')[0]} or None, got {value!r}") from None


def check_real(
    value: Any,
    what: str,
    owner: str = "",
    *,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """``value`` as a finite Python float: ``> 0`` with ``positive``, ``>= minimum``,
    ``<= maximum``. ``check_real(v, what, owner, minimum=0)`` and
    ``check_real(v, what, owner, positive=True)`` are the two forms of a non-negative and a
    positive parameter."""
    if positive and maximum is not None:
        requirement = f"a finite number in (0, {maximum:g}]"
    elif positive:
        requirement = "a finite number > 0"
    elif minimum is not None and maximum is not None:
        requirement = f"a finite number in [{minimum:g}, {maximum:g}]"
    elif minimum is not None:
        requirement = f"a finite number >= {minimum:g}"
    elif maximum is not None:
        requirement = f"a finite number <= {maximum:g}"
    else:
        requirement = "a finite number"
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise refuse(what, requirement, value, owner)
    try:
        v = float(value)
    except OverflowError:  # an int beyond float range
        raise refuse(what, requirement, value, owner) from None
    if (
        not math.isfinite(v)
        or (positive and not v > 0)
        or (minimum is not None and v < minimum)
        or (maximum is not None and v > maximum)
    ):
        raise refuse(what, requirement, value, owner)
    return v


def check_optional_real(value: Any, what: str, owner: str = "", **kw: Any) -> float | None:
    """:func:`check_real`, or None."""
    if value is None:
        return None
    try:
        return check_real(value, what, owner, **kw)
    except ValueError as exc:
        raise ValueError(f"{exc.args[0].split(', got ')[0]} or None, got {value!r}") from None


def check_string(value: Any, what: str, owner: str = "", *, empty: bool = False) -> str:
    """A ``str`` (non-empty unless ``empty``)."""
    if not isinstance(value, str) or (not empty and not value):
        raise refuse(what, "a string" if empty else "a non-empty string", value, owner)
    return value


def check_choice(value: Any, what: str, choices: tuple[Any, ...], owner: str = "") -> Any:
    """One of ``choices`` (compared with ``==``, bools and ints kept apart)."""
    for c in choices:
        if type(value) is type(c) and value == c:
            return value
    raise refuse(what, "one of " + ", ".join(repr(c) for c in choices), value, owner)


def check_environment(value: Any, what: str = "env", owner: str = "") -> dict[str, str]:
    """A mapping of variable names to values, both strings (what ``execve`` can carry)."""
    if value is None:
        return {}
    requirement = "a mapping of variable names to string values"
    if not isinstance(value, Mapping):
        raise refuse(what, requirement, value, owner)
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise refuse(f"{what} key", "a non-empty string without '=' or NUL", k, owner)
        if not isinstance(v, str) or "\0" in v:
            raise refuse(f"{what}[{k!r}]", "a string without NUL (convert it: str(...))", v, owner)
        out[k] = v
    return out


def check_directory(value: Any, what: str = "cwd", owner: str = "") -> str | None:
    """None, or the path of an existing directory."""
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise refuse(what, "a path or None", value, owner)
    path = os.fspath(value)
    if not os.path.isdir(path):
        raise refuse(what, "an existing directory or None", path, owner)
    return str(path)


def check_template(value: str, what: str, names: tuple[str, ...] = (), owner: str = "") -> int:
    """A ``str.format`` template whose fields are positional indices or ``names``; returns the
    number of positional values it needs (the largest index plus one, 0 if none)."""
    need = 0
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise refuse(what, f"a valid format template ({exc})", value, owner) from None
    for _, field, _, _ in fields:
        if field is None:
            continue
        head = field.split(".", 1)[0].split("[", 1)[0]
        if head.isdigit():
            need = max(need, int(head) + 1)
        elif head == "":
            raise refuse(
                what, "a template with numbered fields ({0}, {1}, ...), not {}", value, owner
            )
        elif head not in names:
            allowed = ", ".join(["{0}", "{1}", "...", *(f"{{{n}}}" for n in names)])
            raise refuse(what, f"a template whose fields are {allowed}", value, owner)
    return need
