"""Bounds on the free-form values users hand in: a run's or a schedule's ``args`` and
``kwargs``, and every YAML document a schedule file holds.

Such a value travels as JSON through the broker, the run records and the api's answers, and
every JSON encoder and decoder on that path recurses: a value nested a few hundred levels
deep parses in one process and raises ``RecursionError`` in the next, whose stack is deeper
(a worker decoding its message). YAML's anchors and aliases make a small document that
expands to a billion values when it is serialized ("billion laughs"). ``1e999`` is
infinity, which strict JSON cannot carry, and ``"\ud800"`` a string UTF-8 cannot. So a
value is checked once, where it comes in, against limits well inside what every hop can take.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of lists and mappings in a value (``{"a": [1]}`` is 2 deep)."""
ENVELOPE_DEPTH = 4
"""Levels a request body or a YAML document may add around the args and kwargs it carries
(``{"spec": {"kwargs": ...``): the whole is checked against ``MAX_DEPTH + ENVELOPE_DEPTH``."""
MAX_VALUES = 100_000
"""Most values (containers, keys, items, scalars) in one value, counted as JSON would write
them out: an alias counts again each time it is used."""


def check_json_value(
    value: Any, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES
) -> None:
    """Raise ValueError naming the first bound ``value`` breaks: nested deeper than
    ``max_depth``, more than ``max_values`` values, a float that is not finite, a string that
    is not Unicode text (a lone surrogate)."""
    # Iterative, so that checking a value never needs the recursion it guards against.
    pending: list[tuple[Any, int]] = [(value, 0)]
    count = 0
    while pending:
        item, depth = pending.pop()
        count += 1
        if count > max_values:
            raise ValueError(f"holds more than {max_values} values")
        if isinstance(item, dict):
            children: Any = [*item, *item.values()]
        elif isinstance(item, list | tuple):
            children = item
        else:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{item} is not a finite number")
            if isinstance(item, str) and not item.isascii():
                _check_unicode(item)
            continue
        if depth >= max_depth:
            raise ValueError(f"is nested more than {max_depth} levels deep")
        pending.extend((child, depth + 1) for child in children)


def _check_unicode(text: str) -> None:
    # JSON's "\ud800" escape (and Python's decoder, which lets a raw one through) gives a
    # lone surrogate: a str that no UTF-8 encoder, the api's answers included, can write.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{text[:40]!a}... holds a lone UTF-16 surrogate") from None
