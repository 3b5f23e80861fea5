"""Safe YAML loading that remembers where every value came from.

Used by the scenario model (and later the manifest reader) so that every
validation error can name ``file:line``. Defends against hostile files: size
limit, strict UTF-8, duplicate keys, and alias expansion bombs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xci_cn.errors import ScenarioError

MAX_FILE_BYTES = 4 * 1024 * 1024
# Expanded node budget: a billion-laughs file composes quickly but expands
# exponentially; no real scenario comes near this.
MAX_NODES = 200_000

Loc = tuple[str | int, ...]


@dataclass
class LoadedYaml:
    """A parsed document plus the line of every key and list item."""

    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int:
        """The line of ``loc``, or of its nearest located parent."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)


def format_loc(loc: Loc) -> str:
    """``('stages', 1, 'timeout')`` -> ``stages[1].timeout``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


class _Walker:
    def __init__(self, path: str, loader: yaml.SafeLoader):
        self.path = path
        self.loader = loader
        self.lines: dict[Loc, int] = {(): 1}
        self.count = 0

    def fail(self, node: yaml.Node, message: str) -> ScenarioError:
        return ScenarioError([f"{self.path}:{node.start_mark.line + 1}: {message}"])

    def walk(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, f"document expands to more than {MAX_NODES} values "
                                  "(alias bomb?); refusing to load it")
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, f"{format_loc(loc)}: keys must be plain strings")
                key = self.loader.construct_object(key_node)
                if not isinstance(key, str):
                    key = str(key)
                if key in result:
                    raise self.fail(key_node, f"{format_loc(loc + (key,))}: duplicate key")
                self.lines[loc + (key,)] = key_node.start_mark.line + 1
                result[key] = self.walk(value_node, loc + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.lines[loc + (index,)] = item.start_mark.line + 1
                items.append(self.walk(item, loc + (index,)))
            return items
        return self.loader.construct_object(node, deep=True)


def _yaml_problem(exc: yaml.YAMLError, path: str) -> ScenarioError:
    """One located line for any error of the YAML parser."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return ScenarioError([f"{path}:{line}: invalid YAML: {exc.problem or exc.context or 'invalid YAML'}"])
    return ScenarioError([f"{path}:1: invalid YAML: {getattr(exc, 'reason', None) or exc}"])


def load_yaml_text(text: str, path: str) -> LoadedYaml:
    """Parse one YAML document from ``text``; ``path`` is used in messages."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        raise _yaml_problem(exc, path) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return LoadedYaml(path, None)
        walker = _Walker(path, loader)
        data = walker.walk(root, ())
        return LoadedYaml(path, data, walker.lines)
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, path) from None
    finally:
        loader.dispose()


def read_text(path: Path) -> str:
    """Read a UTF-8 text file, refusing huge or undecodable ones."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ScenarioError([f"{path}:1: file is {size} bytes; the limit is {MAX_FILE_BYTES}"])
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ScenarioError([f"{path}: is a directory, not a YAML file"]) from None
    except PermissionError:
        raise ScenarioError([f"{path}: permission denied"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ScenarioError([f"{path}:{line}: not valid UTF-8 (byte {exc.start})"]) from None


def load_yaml_file(path: Path) -> LoadedYaml:
    """Read and parse ``path``."""
    return load_yaml_text(read_text(path), str(path))


# libyaml's parser when present: manifests of hundreds of objects parse 3-4x faster.
_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_documents(text: str, path: str) -> list[LoadedYaml]:
    """Every document of a multi-document YAML text (empty ones dropped),
    with the same defences as ``load_yaml_text``; the node budget is shared."""
    try:
        loader = _FastLoader(text)
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, path) from None
    documents: list[LoadedYaml] = []
    walker = _Walker(path, loader)
    try:
        while loader.check_node():
            root = loader.get_node()
            if root is None:
                continue
            walker.lines = {(): root.start_mark.line + 1}
            data = walker.walk(root, ())
            if data is not None:
                documents.append(LoadedYaml(path, data, walker.lines))
        return documents
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, path) from None
    finally:
        loader.dispose()
