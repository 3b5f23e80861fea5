"""Safe YAML loading that remembers where every value came from.

Used by the scenario model and the manifest reader so that every
validation error can name ``file:line:col`` and show the offending line. Defends against hostile files: size
limit, strict UTF-8, duplicate keys, and alias expansion bombs.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xci_cn.errors import InvalidInput, ScenarioError

MAX_FILE_BYTES = 4 * 1024 * 1024
# Expanded node budget: a billion-laughs file composes quickly but expands
# exponentially; no real scenario comes near this.
MAX_NODES = 200_000
# Nesting budget for every YAML and JSON document xci-cn reads: deeper files
# would exhaust Python's stack (RecursionError). Istio's CRD schemas, the
# deepest real documents here, nest 20-odd levels.
MAX_DEPTH = 100

Loc = tuple[str | int, ...]
Mark = tuple[int, int]  # 1-based line and column


def located(path: str, mark: Mark, message: str, source: str | None = None) -> str:
    """The one format of a problem in a file: ``file:line:col: message``,
    then, when the offending line is known, that line and a caret under the
    column (as JJB and PyYAML show a mark)."""
    line, column = mark
    head = f"{path}:{line}:{column}: {message}"
    if source is None:
        return head
    text = source.expandtabs(1).rstrip()
    if len(text) > 160:  # keep the caret's neighbourhood of a very long line
        cut = max(0, column - 80)
        text, column = text[cut:cut + 160], column - cut
    return f"{head}\n    {text}\n    {' ' * (column - 1)}^"


def located_in_file(path: str, mark: Mark, message: str) -> str:
    """``located`` for a mark found by another parser (JJB's): the line is
    read back from the file."""
    path = str(path)
    source = None
    if _quotable(path):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                for number, text in enumerate(handle, start=1):
                    if number == mark[0]:
                        source = text
                        break
        except OSError:
            pass
    return located(path, mark, message, source)


def _quotable(path: str) -> bool:
    """Lines are quoted only from files named as YAML: an error about
    /etc/shadow given as a scenario must not print its content."""
    return path.endswith((".yaml", ".yml"))


@dataclass
class LoadedYaml:
    """A parsed document plus the mark of every key and list item."""

    path: str
    data: Any
    marks: dict[Loc, Mark] = field(default_factory=dict)
    source_lines: list[str] = field(default_factory=list)

    def mark_of(self, loc: Loc) -> Mark:
        """The mark of ``loc``, or of its nearest located parent."""
        loc = tuple(loc)
        while loc:
            if loc in self.marks:
                return self.marks[loc]
            loc = loc[:-1]
        return self.marks.get((), (1, 1))

    def line_of(self, loc: Loc) -> int:
        return self.mark_of(loc)[0]

    def problem(self, loc: Loc, message: str, *, field_path: bool = True) -> str:
        """``file:line:col: field: message`` and the offending line."""
        mark = self.mark_of(loc)
        text = f"{format_loc(loc)}: {message}" if field_path else message
        return located(self.path, mark, text, self.source_line(mark[0]))

    def source_line(self, line: int) -> str | None:
        if 0 < line <= len(self.source_lines):
            return self.source_lines[line - 1]
        return None


def format_loc(loc: Loc) -> str:
    """``('stages', 1, 'timeout')`` -> ``stages[1].timeout``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _mark(node: yaml.Node) -> Mark:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Walker:
    def __init__(self, path: str, loader: Any, source_lines: list[str]):
        self.path = path
        self.loader = loader
        self.source_lines = source_lines
        self.marks: dict[Loc, Mark] = {(): (1, 1)}
        self.count = 0

    def fail(self, node: yaml.Node, message: str) -> ScenarioError:
        line = node.start_mark.line + 1
        source = self.source_lines[line - 1] if 0 < line <= len(self.source_lines) else None
        return ScenarioError([located(self.path, _mark(node), message, source)])

    def walk(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, f"document expands to more than {MAX_NODES} values "
                                  "(alias bomb?); refusing to load it")
        if len(loc) > MAX_DEPTH:
            raise self.fail(node, f"nested deeper than {MAX_DEPTH} levels; refusing to load it")
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
                self.marks[loc + (key,)] = _mark(key_node)
                result[key] = self.walk(value_node, loc + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.marks[loc + (index,)] = _mark(item)
                items.append(self.walk(item, loc + (index,)))
            return items
        return self.loader.construct_object(node, deep=True)


class _BoundedComposer:
    """Refuses nesting beyond MAX_DEPTH while composing: PyYAML's composer
    recurses twice per level and would hit Python's limit first."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[attr-defined]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels; refusing to load it", event.start_mark)
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1


class _SafeLoader(_BoundedComposer, yaml.SafeLoader):
    pass


def _yaml_problem(exc: yaml.YAMLError, path: str, source_lines: list[str] | None = None) -> ScenarioError:
    """One located problem for any error of the YAML parser."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        at = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        source = source_lines[at[0] - 1] if source_lines and 0 < at[0] <= len(source_lines) else None
        message = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        return ScenarioError([located(path, at, f"invalid YAML: {message}", source)])
    return ScenarioError([located(path, (1, 1), f"invalid YAML: {getattr(exc, 'reason', None) or exc}")])


def _source_lines(text: str, path: str) -> list[str]:
    return text.splitlines() if _quotable(path) else []


def load_yaml_text(text: str, path: str) -> LoadedYaml:
    """Parse one YAML document from ``text``; ``path`` is used in messages."""
    source = _source_lines(text, path)
    try:
        loader = _SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        raise _yaml_problem(exc, path, source) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return LoadedYaml(path, None, source_lines=source)
        walker = _Walker(path, loader, source)
        data = walker.walk(root, ())
        return LoadedYaml(path, data, walker.marks, source)
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, path, source) from None
    finally:
        loader.dispose()


def os_reason(exc: OSError) -> str:
    """What an OSError means for a path the user gave, in words."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def path_problem(path: Path, what: str = "file or directory") -> str | None:
    """Why ``path`` (as the user wrote it) is not a readable file or
    directory, in words: not "no such file" for a symlink loop or a FIFO."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path}: {'broken symbolic link' if path.is_symlink() else 'no such file or directory'}"
    except OSError as exc:
        return f"{path}: {os_reason(exc)}"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    return f"{path}: is {file_kind(mode)}, not a {what}"


def read_text(path: Path) -> str:
    """Read a UTF-8 text file, refusing huge, undecodable or special ones (a
    FIFO would block the read forever)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        reason = "broken symbolic link" if path.is_symlink() else "no such file"
        raise ScenarioError([f"{path}: {reason}"]) from None
    except OSError as exc:
        raise ScenarioError([f"{path}: {os_reason(exc)}"]) from None
    if stat.S_ISDIR(info.st_mode):
        raise ScenarioError([f"{path}: is a directory, not a YAML file"])
    if not stat.S_ISREG(info.st_mode):
        raise ScenarioError([f"{path}: is {file_kind(info.st_mode)}, not a regular file"])
    if info.st_size > MAX_FILE_BYTES:
        raise ScenarioError([located(str(path), (1, 1), f"file is {info.st_size} bytes; the limit is "
                                                         f"{MAX_FILE_BYTES}")])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError([f"{path}: {os_reason(exc)}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ScenarioError([located(str(path), (line, column), f"not valid UTF-8 (byte {exc.start})")]) from None


def load_yaml_file(path: Path) -> LoadedYaml:
    """Read and parse ``path``."""
    return load_yaml_text(read_text(path), str(path))


# libyaml's parser when present: manifests of hundreds of objects parse 3-4x faster.
_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_documents(text: str, path: str) -> list[LoadedYaml]:
    """Every document of a multi-document YAML text (empty ones dropped),
    with the same defences as ``load_yaml_text``; the node budget is shared.
    (libyaml itself refuses nesting beyond 1,000; the walker at MAX_DEPTH.)"""
    source = _source_lines(text, path)
    try:
        loader = _FastLoader(text)
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, path, source) from None
    documents: list[LoadedYaml] = []
    walker = _Walker(path, loader, source)
    try:
        while loader.check_node():
            root = loader.get_node()
            if root is None:
                continue
            walker.marks = {(): _mark(root)}
            data = walker.walk(root, ())
            if data is not None:
                documents.append(LoadedYaml(path, data, walker.marks, source))
        return documents
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, path, source) from None
    finally:
        loader.dispose()


class NestingTooDeep(InvalidInput):
    """A JSON document nests deeper than MAX_DEPTH."""


def depth_problem(data: Any) -> bool:
    """True when ``data`` (parsed JSON) nests deeper than MAX_DEPTH; iterative,
    so it cannot itself run out of stack."""
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def load_json_file(path: Path) -> Any:
    """Read a JSON file xci-cn wrote (summary.json, state.json) or was given,
    with the YAML loader's defences: size, UTF-8, nesting depth. Problems
    are InvalidInput naming the file; a missing file is FileNotFoundError."""
    import json

    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(str(path))
    text = read_text(path)
    try:
        data = json.loads(text)
    except RecursionError:
        raise NestingTooDeep(f"{path}: nested deeper than {MAX_DEPTH} levels; refusing to load it") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    if depth_problem(data):
        raise NestingTooDeep(f"{path}: nested deeper than {MAX_DEPTH} levels; refusing to load it")
    return data


def check_nesting(path: Path) -> None:
    """Refuse a YAML (or JSON) file another parser will read (JJB's, the
    Kubernetes client's kubeconfig loader) when it is too big or nests deeper
    than MAX_DEPTH: those parsers recurse and would end in RecursionError.
    Only the event stream is read (custom tags such as JJB's !include need
    no constructor for that)."""
    text = read_text(path)
    source = _source_lines(text, str(path))
    depth = 0

    def too_deep(mark: Mark) -> ScenarioError:
        line = source[mark[0] - 1] if 0 < mark[0] <= len(source) else None
        return ScenarioError([located(str(path), mark, f"nested deeper than {MAX_DEPTH} levels; "
                                                       "refusing to load it", line)])

    try:
        # PyYAML's own parser: iterative, and without libyaml's look-ahead,
        # which fails on deep flow collections before their first event.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    start = event.start_mark
                    raise too_deep((start.line + 1, start.column + 1) if start else (1, 1))
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return  # a syntax error: the parser that reads the file reports it in its words


def shape_problems(path: Path, exc: Any, prefix: Loc = ()) -> list[str]:
    """A pydantic ValidationError of a document read from ``path`` as one
    line per problem: ``file: field: message``."""
    return [f"{path}: {format_loc(prefix + tuple(e['loc']))}: {e['msg'][0].lower()}{e['msg'][1:]}"
            for e in exc.errors()]
