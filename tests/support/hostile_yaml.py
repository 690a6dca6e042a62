"""Hostile YAML for the schedule-file and resource tests: an aliases bomb and deep nesting,
written as the entries of a ``kwargs:`` block (four spaces in)."""

from __future__ import annotations


def laughs_kwargs() -> str:
    """kwargs whose last alias expands to 10**9 strings ("billion laughs"): a few hundred
    bytes of YAML, a billion values once written out as JSON."""
    lines = ['    l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"    l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 10)]
    return "\n".join(lines) + "\n"


def deep_kwargs(depth: int) -> str:
    """kwargs with one entry, a flow list ``depth`` levels deep."""
    return "    a: " + "[" * depth + "]" * depth + "\n"
