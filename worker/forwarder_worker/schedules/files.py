"""ScheduledTask YAML files in a folder: which files count, and reading one within limits.

Local mode keeps its schedules as files, the documents ``kubectl apply -f`` takes. Two
components read them: the folder source applies them to the store
(``forwarder_operator.folder``) and the api edits them (``forwarder_api.local_schedules``).
Both read through this module, so they agree on which files are schedules, and a file too
large or not UTF-8 is refused by both, with the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forwarder_worker.names import API_VERSION, KIND, NAME, NAMESPACE
from forwarder_worker.values import ENVELOPE_DEPTH, MAX_DEPTH, check_json_value

MAX_FILE_BYTES = 1024 * 1024
"""Larger files are refused unread: a folder is edited by hand, not filled with data."""


class FileError(ValueError):
    """A schedule file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Declared:
    """One ScheduledTask document found in a file."""

    namespace: str
    name: str
    spec: Any
    path: Path

    @property
    def entry_name(self) -> str:
        return f"{self.namespace}/{self.name}"


def schedule_files(folder: Path) -> list[Path]:
    """The schedule files in ``folder`` (``*.yaml``, ``*.yml``; hidden files, such as an
    editor's or the api's temporary ones, left out), in a stable order."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix in (".yaml", ".yml") and path.is_file() and not path.name.startswith(".")
    )


def read_documents(path: Path) -> list[Any]:
    """Every YAML document in ``path`` as written (an empty one is None), or FileError
    naming the problem: too large, not UTF-8, not YAML, nested too deeply or expanding to
    too many values (:mod:`forwarder_worker.values`). OSError passes through."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise FileError(f"{size} bytes is more than the {MAX_FILE_BYTES}-byte limit")
    try:
        documents = list(yaml.safe_load_all(path.read_bytes().decode("utf-8")))
    except UnicodeDecodeError:
        raise FileError("is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise FileError(f"is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        # PyYAML composes nested nodes recursively: thousands of levels exhaust the stack.
        raise FileError("is not usable YAML: nested too deeply") from None
    except ValueError as exc:
        # A constructor's own refusal, e.g. an integer past Python's 4300-digit limit.
        raise FileError(f"is not usable YAML: {exc}") from None
    for index, document in enumerate(documents):
        try:
            # Aliases are shared when loaded, so a "billion laughs" file loads small and only
            # explodes when written out as JSON: refuse it here, before anything does.
            check_json_value(document, max_depth=MAX_DEPTH + ENVELOPE_DEPTH)
        except ValueError as exc:
            raise FileError(f"document {index + 1} {exc}") from None
    return documents


def is_scheduled_task(document: Any) -> bool:
    """Whether ``document`` is a ScheduledTask with a name (it may still be invalid)."""
    return (
        isinstance(document, dict)
        and document.get("apiVersion") == API_VERSION
        and document.get("kind") == KIND
        and isinstance(document.get("metadata"), dict)
        and isinstance(document["metadata"].get("name"), str)
    )


def declared(path: Path) -> list[Declared]:
    """The ScheduledTask documents in ``path``, or FileError naming the first problem: any
    document that is not a well-named ScheduledTask makes the whole file unusable."""
    documents = [d for d in read_documents(path) if d is not None]
    found = []
    for index, doc in enumerate(documents):
        where = f"document {index + 1}" if len(documents) > 1 else "document"
        if not isinstance(doc, dict):
            raise FileError(f"{where} is a {type(doc).__name__}, not a ScheduledTask mapping")
        if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
            raise FileError(
                f"{where} is {doc.get('apiVersion')}/{doc.get('kind')}, not {API_VERSION}/{KIND}"
            )
        meta = doc.get("metadata")
        if not isinstance(meta, dict):
            raise FileError(f"{where} has no metadata")
        name, namespace = meta.get("name"), meta.get("namespace", "default")
        if not isinstance(name, str) or not NAME.match(name):
            raise FileError(f"{where}: metadata.name {name!r} is not a DNS-1123 name")
        if not isinstance(namespace, str) or not NAMESPACE.match(namespace):
            raise FileError(f"{where}: metadata.namespace {namespace!r} is not a DNS-1123 label")
        found.append(Declared(namespace, name, doc.get("spec"), path))
    return found
