"""Generate the values table of charts/forwarder/README.md from the comments in values.yaml.

Each key in values.yaml is documented by a ``# -- text`` comment right above it (more ``#``
lines may continue the text). The table lists every key with its type (from
values.schema.json), its default and that text, between the README's
``<!-- values-table:start -->`` and ``<!-- values-table:end -->`` markers.

    python scripts/values_table.py          # rewrite the table in README.md
    python scripts/values_table.py --check  # exit 1 if README.md is not current

A key without a ``# --`` comment, or one the schema does not know, is an error: the table and
the schema are how users learn the values, so neither may miss one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "forwarder"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_.-]*):(?:\s|$)")
_DOC = re.compile(r"^ *# -- (?P<text>.*)$")
_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")


class ValuesDocError(ValueError):
    """values.yaml has a key without a description, or one the schema does not define."""


@dataclass(frozen=True)
class Row:
    """One documented key: its dotted path, schema type, default and description."""

    path: str
    type: str
    default: str
    description: str


def documented_keys(values_text: str) -> list[tuple[str, str]]:
    """(dotted path, description) of every key in ``values_text``, in file order."""
    keys: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    description: list[str] | None = None
    undocumented: list[str] = []
    for number, line in enumerate(values_text.splitlines(), start=1):
        if (doc := _DOC.match(line)) is not None:
            description = [doc["text"].strip()]
            continue
        if (more := _MORE.match(line)) is not None:
            # A plain comment continues a description only right after its `# --` lines;
            # anywhere else it is a commented-out example and is not part of any text.
            if description is not None and more["text"] and not more["text"].startswith("-"):
                description.append(more["text"].strip())
            else:
                description = None
            continue
        match = _KEY.match(line)
        if match is None:
            description = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(key for _, key in stack)
        if description is None:
            undocumented.append(f"line {number}: {path}")
        else:
            keys.append((path, " ".join(description)))
        description = None
    if undocumented:
        raise ValuesDocError("keys without a `# --` comment: " + ", ".join(undocumented))
    return keys


def _schema_node(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        node = _resolve(schema, node)
        properties = node.get("properties", {})
        if part not in properties:
            raise ValuesDocError(f"{path}: not defined in values.schema.json")
        node = properties[part]
    return _resolve(schema, node)


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        node = {**schema["$defs"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _default_of(values: Any, path: str) -> Any:
    for part in path.split("."):
        values = values[part]
    return values


def rows(values_text: str, schema: dict[str, Any]) -> list[Row]:
    """The table rows of every key in ``values_text``, typed by ``schema``."""
    values = yaml.safe_load(values_text)
    result = []
    for path, description in documented_keys(values_text):
        node = _schema_node(schema, path)
        kind = node.get("type", "any")
        kind = " \\| ".join(kind) if isinstance(kind, list) else kind
        default = _default_of(values, path)
        # A mapping with keys has rows of its own for them.
        shown = "" if isinstance(default, dict) and default else f"`{json.dumps(default)}`"
        result.append(Row(path, kind, shown, description.replace("|", "\\|")))
    return result


def table(values_text: str, schema: dict[str, Any]) -> str:
    """The values table as Markdown."""
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    lines += [
        f"| `{row.path}` | {row.type} | {row.default} | {row.description} |"
        for row in rows(values_text, schema)
    ]
    return "\n".join(lines) + "\n"


def with_table(readme: str, values_table: str) -> str:
    """``readme`` with the text between the markers replaced by ``values_table``."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValuesDocError(f"README.md lacks the {START} ... {END} markers")
    return readme[: start + len(START)] + "\n\n" + values_table + "\n" + readme[end:]


def current_readme(chart: Path = CHART) -> tuple[str, str]:
    """(README.md as it is, README.md as it should be)."""
    schema = json.loads((chart / "values.schema.json").read_text())
    readme = (chart / "README.md").read_text()
    return readme, with_table(readme, table((chart / "values.yaml").read_text(), schema))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is not current")
    args = parser.parse_args(argv)
    try:
        readme, wanted = current_readme()
    except ValuesDocError as exc:
        print(f"values_table: {exc}", file=sys.stderr)
        return 2
    if readme == wanted:
        return 0
    if args.check:
        print(
            "values_table: charts/forwarder/README.md is stale; run `make manifests`",
            file=sys.stderr,
        )
        return 1
    (CHART / "README.md").write_text(wanted)
    print("values_table: updated charts/forwarder/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
