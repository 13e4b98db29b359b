"""Reading a job spec document (JSON first, then YAML) without letting a hostile one hurt.

Refused, as a `SpecError` naming the field where there is one: YAML aliases that expand past MAX_VALUES
values ("billion laughs") or refer to themselves, nesting deeper than MAX_DEPTH (libyaml takes quadratic time
on deep nesting and crashes past some 40k levels, so the parser's events are counted before anything is
built), YAML types beyond strings, numbers, booleans, null, lists and mappings (`!!python/object`, `!!binary`,
`!!set`, `!!timestamp`…), numbers that are not finite or do not fit in 64 bits, NUL or a lone surrogate
(JSON's `\\ud800`, which no UTF-8 answer could carry) in any string, and keys holding control or invisible
characters. An unquoted YAML date stays the text it was written as, as Go reads it into a string field.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from shoal.errors import SpecError

MAX_VALUES = 200_000
MAX_DEPTH = 100
_INT64 = 1 << 63
_TOO_LONG = object()  # an integer Python refuses to read (more than 4300 digits)
_BASE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


def _construct_int(loader: Any, node: Any) -> Any:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:
        if str(loader.construct_scalar(node)).replace("_", "").lstrip("+-").isdigit():
            return _TOO_LONG
        raise


class _SpecLoader(_BASE_LOADER):
    """The safe loader, reading timestamps as text and refusing integers Python cannot hold."""

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP]
        for first, resolvers in _BASE_LOADER.yaml_implicit_resolvers.items()
    }


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_document(text: str | bytes) -> Any:
    """A JSON or YAML document, checked; anything malformed or hostile is a `SpecError`."""
    try:
        try:
            document = json.loads(text)
        except ValueError:  # not JSON: YAML, which is slower to parse
            document = _load_yaml(text)
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own limit (PyYAML 6.0.4 on), met while scanning ahead
            raise SpecError("", f"the spec is nested more than {MAX_DEPTH} deep") from None
        raise SpecError("", f"the spec is not valid JSON or YAML: {exc}") from exc
    except RecursionError:
        raise SpecError("", "the spec is nested too deeply") from None
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:  # PyYAML's explicit tags, e.g.
        raise SpecError("", f"the spec is not valid JSON or YAML: {exc!r}") from None  # !!bool "x", !!int ""
    check_document(document)
    return document


def _load_yaml(text: str | bytes) -> Any:
    depth = values = 0
    for event in yaml.parse(text, Loader=_SpecLoader):
        values += isinstance(event, yaml.NodeEvent)
        if values > MAX_VALUES:
            raise SpecError("", f"the spec holds more than {MAX_VALUES} values")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH + 1:
                raise SpecError("", f"the spec is nested more than {MAX_DEPTH} deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_aliases(root: Any) -> None:
    """The node graph's size with every alias expanded, memoized so that this is linear in its nodes."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    work: list[tuple[Any, bool]] = [(root, False)]
    while work:
        node, finished = work.pop()
        if isinstance(node, yaml.ScalarNode):
            children = []
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = node.value
        if finished:
            active.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_VALUES:
                raise SpecError("", f"the spec holds more than {MAX_VALUES} values once its YAML aliases are expanded")
        elif id(node) in active:
            raise SpecError("", "the spec refers to itself through a YAML alias")
        elif id(node) not in sizes:
            active.add(id(node))
            work.append((node, True))
            work.extend((child, False) for child in children)


def check_document(document: Any) -> None:
    """Depth, size, keys and scalars of a loaded document (or of a mapping given directly)."""
    count = 1
    work: list[tuple[Any, str, int]] = [(document, "", 0)]
    while work:
        value, field, depth = work.pop()
        if depth > MAX_DEPTH:
            raise SpecError(field, f"is nested more than {MAX_DEPTH} deep")
        count += len(value) if isinstance(value, dict | list) else 0
        if count > MAX_VALUES:
            raise SpecError("", f"the spec holds more than {MAX_VALUES} values")
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and not key.isprintable():  # named by its mapping: never shown raw
                    raise SpecError(field, f"the key {key!r} holds control or invisible characters")
                _check_scalar(key, field)
                work.append((item, f"{field}.{key}" if field else str(key), depth + 1))
        elif isinstance(value, list):
            work.extend((item, f"{field}[{index}]", depth + 1) for index, item in enumerate(value))
        else:
            _check_scalar(value, field)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_scalar(value: Any, field: str) -> None:
    if value is _TOO_LONG or (isinstance(value, int) and not -_INT64 <= value < _INT64):
        raise SpecError(field, "is too large a number")
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise SpecError(field, "must be a finite number")
    if isinstance(value, str) and "\0" in value:
        raise SpecError(field, "must not contain NUL")
    if isinstance(value, str) and not value.isascii() and not _is_unicode(value):
        raise SpecError(field, "is not valid Unicode text (it holds a lone surrogate)")
    if value is not None and not isinstance(value, str | int | float):
        raise SpecError(field, f"a YAML {type(value).__name__} is not allowed here; quote it to make it text")
