"""Job templates: a spec is rendered as a Go `text/template` before it is parsed, as `bacalhau job run` does.

Shoal understands the part of text/template that job specs use:

    {{.name}}  {{ .name }}     the variable's value
    {{- .name -}}              the same, trimming the whitespace before and after the action
    {{/* a comment */}}        nothing
    {{"{{"}}  {{`text`}}       a literal: the way to write `{{` in a templated spec

Any other action is an error naming its line, and so is a variable that is not given (Go's `missingkey=error`).
Values are inserted as they are, neither quoted nor escaped: quoting them where YAML needs it, as in
`URL: "{{.url}}"`, is the template author's job.

Named templates are the files `templates/jobs/<name>.yaml` of the repository; a file's first line, a `#` comment,
describes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import SpecError

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates" / "jobs"

_SPACE = " \t\r\n"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(rf"\.({_IDENTIFIER})")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`')
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class _Action:
    start: int  # offset of `{{`
    end: int  # offset just after `}}`
    source: str  # the action as written, `{{` to `}}`
    body: str  # what is between the delimiters and trim markers, stripped
    line: int
    trim_before: bool
    trim_after: bool


def render(text: str, values: Mapping[str, str]) -> str:
    """`text` with every action replaced; a `SpecError` names each missing variable or the bad action's line."""
    if "{{" not in text:
        return text
    pieces: list[str] = []
    missing: dict[str, int] = {}
    pos, trim_next = 0, False
    for action in _actions(text):
        before = text[pos:action.start]
        before = before.lstrip(_SPACE) if trim_next else before
        pieces.append(before.rstrip(_SPACE) if action.trim_before else before)
        name = _variable(action)
        if name is None:
            pieces.append(_literal(action))
        elif name in values:
            pieces.append(values[name])
        else:
            missing.setdefault(name, action.line)
        pos, trim_next = action.end, action.trim_after
    if missing:
        raise SpecError("", _missing_message(missing))
    rest = text[pos:]
    pieces.append(rest.lstrip(_SPACE) if trim_next else rest)
    return "".join(pieces)


def variables(text: str) -> list[str]:
    """The variables `text` uses, in order of first use."""
    names = (_variable(action) for action in _actions(text))
    return list(dict.fromkeys(name for name in names if name is not None))


def env_values(pattern: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables whose names match `pattern` anywhere (`*` means all); raises `re.error`."""
    matcher = re.compile(".*" if pattern == "*" else pattern)
    return {key: value for key, value in environ.items() if matcher.search(key)}


@dataclass(frozen=True)
class JobTemplate:
    """A named template from `templates/jobs`."""

    name: str
    description: str
    text: str

    @property
    def variables(self) -> list[str]:
        return variables(self.text)


def job_templates(directory: Path = TEMPLATES_DIR) -> list[JobTemplate]:
    """Every named template, by name."""
    return [_read_template(path) for path in sorted(directory.glob("*.yaml"))]


def job_template(name: str, directory: Path = TEMPLATES_DIR) -> JobTemplate:
    path = directory / f"{name}.yaml"
    if not _TEMPLATE_NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(template.name for template in job_templates(directory)) or "none"
        raise SpecError("", f"there is no job template named {name!r} (the templates are: {known})")
    return _read_template(path)


def _read_template(path: Path) -> JobTemplate:
    text = path.read_text()
    first = text.split("\n", 1)[0]
    return JobTemplate(path.stem, first[1:].strip() if first.startswith("#") else "", text)


def _actions(text: str) -> Iterator[_Action]:
    pos = 0
    while (start := text.find("{{", pos)) != -1:
        line = text.count("\n", 0, start) + 1
        inner = start + 2
        trim_before = text[inner:inner + 1] == "-" and text[inner + 1:inner + 2] in tuple(_SPACE)
        if trim_before:
            inner += 2
        close = _closing(text, inner, line)
        trim_after = close - 2 >= inner and text[close - 1] == "-" and text[close - 2] in _SPACE
        body = text[inner:close - 1 if trim_after else close].strip(_SPACE)
        pos = close + 2
        yield _Action(start, pos, text[start:pos], body, line, trim_before, trim_after)


def _closing(text: str, pos: int, line: int) -> int:
    """The offset of the `}}` closing the action whose body starts at `pos`, past any string or comment."""
    while pos < len(text):
        if text.startswith("}}", pos):
            return pos
        if text.startswith("/*", pos):
            end = text.find("*/", pos + 2)
            if end == -1:
                raise SpecError("", f"line {line}: the template comment /* is never closed with */")
            pos = end + 2
        elif text[pos] in "\"`":
            match = _STRING.match(text, pos)
            if match is None:
                raise SpecError("", f"line {line}: a quoted string in a template action is never closed")
            pos = match.end()
        else:
            pos += 1
    raise SpecError("", f"line {line}: the template action {{{{ is never closed with }}}} "
                        "(use --no-template to send the spec as it is)")


def _variable(action: _Action) -> str | None:
    """The variable the action inserts, or None for a comment or a literal."""
    match = _VARIABLE.fullmatch(action.body)
    if match:
        return match.group(1)
    if (action.body.startswith("/*") and action.body.endswith("*/")) or _STRING.fullmatch(action.body):
        return None
    hint = f"; did you mean {{{{.{action.body}}}}}?" if re.fullmatch(_IDENTIFIER, action.body) else ""
    raise SpecError("", f"line {action.line}: {action.source} is not a template action Shoal supports: "
                        f"use {{{{.name}}}} for a variable, or --no-template to send the spec as it is{hint}")


def _literal(action: _Action) -> str:
    body = action.body
    if body.startswith("`"):
        return body[1:-1]
    if body.startswith('"'):
        try:
            return str(json.loads(body))
        except ValueError:
            raise SpecError("", f"line {action.line}: {body} is not a string literal Shoal understands") from None
    return ""  # a comment


def _missing_message(missing: dict[str, int]) -> str:
    listed = ", ".join(f'"{name}" (line {line})' for name, line in missing.items())
    example = " ".join(f"-V {name}=VALUE" for name in missing)
    noun = "variable" if len(missing) == 1 else "variables"
    return f"the job template needs the {noun} {listed}: give {'it' if len(missing) == 1 else 'them'} with {example}"
