"""Reading a config file: YAML within limits, and pydantic's errors as one line with the reason.

A sweep, zoo or catalog file is read before anything is validated, with limits that keep a
mistaken or hostile file from costing more than an error message (:func:`read_yaml`):

- at most :data:`MAX_YAML_BYTES` (the shipped catalog of 46 models is 17 KB);
- nested at most :data:`MAX_YAML_DEPTH` levels (the schema's deepest key is 4 levels down),
  checked on the parser's events, which are not recursive, before the document is composed (a
  list 3,000 deep would otherwise end in a RecursionError);
- at most :data:`MAX_YAML_VALUES` values once aliases are expanded (a "billion laughs" file is
  small on disk and exponential in memory);
- every key of a mapping once: a key given twice is refused naming both lines (YAML keeps the
  last silently).

:func:`format_validation_error` turns a pydantic error into ``<file>: key '<path>': <message>``,
adding a bound's reason (the field's ``description``) when a value is out of range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from whichmodel.errors import ConfigError

MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The file's top-level mapping, read within the limits of the module docstring."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB; a sweep, zoo or "
                          "catalog file is tens of KB at most (the shipped 46-model catalog: 17 KB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        _check_depth(path, text)
        data = _load(path, text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got "
                          f"{type(data).__name__}")
    return path, data


def _check_depth(path: Path, text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{path}: line {event.start_mark.line + 1}: nested deeper than "
                                  f"{MAX_YAML_DEPTH} levels; no key of a config file is nested "
                                  "that deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _load(path: Path, text: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(path, node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nodes(path: Path, root: yaml.Node) -> None:
    """Every mapping's keys once (both lines named), and the values counted with aliases
    expanded; iterative, so any depth that passed :func:`_check_depth` is fine."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    count = 0
    while stack:
        node, where = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"{path}: more than {MAX_YAML_VALUES:,} values once its aliases "
                              "(*name) are expanded; write the values out, or fewer of them")
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    stack.append((value_node, where))
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                line = key_node.start_mark.line + 1
                if key is not None and key in first:
                    name = f"{where}.{key}" if where else key
                    raise ConfigError(f"{path}: key {name!r} given twice, at line {first[key]} "
                                      f"and line {line}; YAML would keep the second silently, so "
                                      "keep one")
                if key is not None:
                    first[key] = line
                stack.append((value_node, f"{where}.{key}" if where else str(key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))


# --------------------------------------------------------------------------- pydantic's errors
_UNION_TAGS = {"PoolDefinition", "ModelEntry", "TaskEntry"}
_BOUND_ERRORS = {"less_than_equal", "less_than", "greater_than_equal", "greater_than",
                 "too_long", "too_short"}


def _key_parts(loc: tuple) -> list:
    """A location without pydantic's union-branch tags (``list[str]``, ``PoolDefinition``)."""
    return [p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, list, dict, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found += _models_in(arg)
    return found


def field_reason(model: type[BaseModel], loc: tuple) -> str | None:
    """The ``description`` of the field at ``loc`` (the reason for its bounds), if any."""
    current: list[type[BaseModel]] = [model]
    reason = None
    for part in loc:
        if not isinstance(part, str):
            continue
        chosen = [m for m in current if m.__name__ == part]
        if chosen:  # a union's branch tag
            current = chosen
            continue
        fields = [m.model_fields[part] for m in current if part in m.model_fields]
        if not fields:
            continue
        reason = fields[0].description
        current = _models_in(fields[0].annotation)
    return reason


def format_validation_error(path: Path, err: ValidationError,
                            model: type[BaseModel] | None = None) -> str:
    """One line: the file, the key the user wrote and what is wrong with it (for a value out of
    bounds, the reason of the bound from ``model``'s schema)."""
    errors = err.errors()
    # Where a value may take several forms (a list or an entry), the error of the form the user
    # wrote is the deepest one; a type mismatch with another form says less.
    e = max(errors, key=lambda x: (x["type"] not in ("list_type", "literal_error", "model_type",
                                                     "string_type", "dict_type"),
                                   len(_key_parts(x["loc"]))))
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]"
                   for p in _key_parts(e["loc"])).replace(".[", "[")
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        msg = "unknown key (misspelled?); remove it or see the README's configuration table"
    elif kind == "missing":
        msg = "required key missing"
    else:
        msg = msg.removeprefix("Value error, ")
        if kind in _BOUND_ERRORS:
            msg = f"{msg}, got {_short(e.get('input'))}"
            reason = field_reason(model, e["loc"]) if model is not None else None
            if reason:
                msg += f" ({reason})"
    others = {tuple(_key_parts(x["loc"])) for x in errors} - {tuple(_key_parts(e["loc"]))}
    more = f" (and {len(others)} more)" if others else ""
    where = f"key {loc!r}" if loc else "top level"
    return f"{path}: {where}: {msg}{more}"


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (list, tuple)) else f"{len(value)} values"
    return text if len(text) <= 40 else text[:37] + "..."
