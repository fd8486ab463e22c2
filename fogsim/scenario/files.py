"""Scenario files: TOML read with ``tomllib``, ``--set`` overrides, validation.

Every user mistake becomes one :class:`ScenarioError` naming the file (or the
``--set`` option), the field path, the bad value and what is allowed, never a
traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fogsim.scenario.schema import Scenario


class ScenarioError(ValueError):
    """A scenario file or override is invalid; the message says where and why."""


def shown(text: str) -> str:
    """User text (a path, a key) as an error message shows it: as is, or quoted with
    escapes if it holds control characters (a terminal would swallow them)."""
    return text if text.isprintable() else repr(text)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# a cross-field check's message names its field first: "simulation.x: ..." (a path from
# the top) or "memory_max: ..." (a field of the section that raised it)
FIELD_FIRST = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*): (.*)$")


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the section holding ``loc``'s last key allows (its parent's fields)."""
    model: Any = Scenario
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        kind = field.annotation
        for arg in (kind, *typing.get_args(kind)):  # X, list[X], dict[str, X], X | None
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            return []
        if typing.get_origin(kind) in (list, dict) and parts:
            parts.pop(0)  # the list index or dict key
    return list(model.model_fields)


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """``unknown key`` with a close match, or the keys allowed there."""
    known = _known_keys(loc)
    if not known:
        return "unknown key"
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(known)}"
    return f"unknown key; {hint}"


def _format_errors(source: str, err: ValidationError, overrides: list[str]) -> str:
    """One line per problem: the field, what is wrong, the value; a field set by a
    ``--set`` override names the override instead of the file."""
    lines = [f"{source}: invalid scenario"]
    for e in err.errors():
        loc = ".".join(shown(str(p)) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(e["loc"])
        got = e.get("input")
        value = "" if isinstance(got, dict) else f" (got {_clip(repr(got))})"
        for problem in msg.splitlines():  # a cross-field check names its own fields
            where, what = loc, problem
            if m := FIELD_FIRST.match(problem):  # a field of the model at loc, or a full path
                field = m.group(1)
                where = field if not loc or field.startswith(loc + ".") else f"{loc}.{field}"
                what, value = m.group(2), ""
            lines.append(f"  {where or '(top level)'}: {what}{value}{from_set(overrides, where)}")
    return "\n".join(lines)


def _overridden(override: str, loc: str) -> bool:
    """Whether ``--set override`` set field ``loc`` (or the section holding it)."""
    key = override.partition("=")[0].strip()
    return bool(loc) and (
        loc == key or f"{loc}.".startswith(f"{key}.") or key.startswith(f"{loc}.")
    )


def from_set(overrides: list[str], loc: str) -> str:
    """`` (from --set KEY=VALUE)`` when an override set field ``loc``, else empty: an
    error names what the user typed, not the file that did not say it."""
    origin = next((o for o in overrides if _overridden(o, loc)), None)
    return f" (from --set {origin})" if origin else ""


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.1"`` → (["train", "lr"], 0.1); the value is read as TOML."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ScenarioError(f"--set {text!r}: expected section.key=value, e.g. train.lr=0.1")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except (ValueError, RecursionError):  # TOMLDecodeError, or an int too long to read
        value = raw.strip()  # a bare word such as mnist is taken as a string
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides; a number in the path indexes a list
    (``fleet.classes.0.memory=8MiB``)."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = raw
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ScenarioError(
                        f"--set {text!r}: {part!r} is not an index of a list of {len(node)}"
                    )
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
                if not last:
                    node.setdefault(part, {})
            else:
                raise ScenarioError(f"--set {text!r}: {path[depth - 1]!r} is not a section")
            if last:
                node[key] = value
            else:
                node = node[key]
    return raw


def read_toml(path: Path) -> dict[str, Any]:
    name = shown(str(path))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(f"{name}: scenario file not found") from None
    except OSError as e:
        raise ScenarioError(f"{name}: cannot read scenario file ({e.strerror})") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{name}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{name}: TOML syntax error: {e}") from None
    except ValueError as e:  # e.g. an integer too long to convert
        raise ScenarioError(f"{name}: invalid TOML value: {e}") from None
    except RecursionError:
        raise ScenarioError(f"{name}: TOML nested too deeply") from None


def validate_scenario(
    raw: dict[str, Any], source: str = "<scenario>", overrides: list[str] | None = None
) -> Scenario:
    try:
        return Scenario.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(_format_errors(source, e, overrides or [])) from None


# files a scenario names: a relative path in the scenario file is relative to the file,
# one set with --set to the current directory; the resolved scenario holds them absolute
PATH_FIELDS = (("fleet", "file"), ("fleet", "trace"))


def input_files(scenario: Scenario) -> dict[str, dict[str, str]]:
    """The files ``scenario`` names (:data:`PATH_FIELDS`), each with the SHA-256 of
    its contents now. A run stores them (``inputs.json``) because the scenario holds
    only the path: a fleet or trace file edited between a run and its resume would
    otherwise rebuild another fleet under the same scenario, unnoticed."""
    found = {}
    for section, key in PATH_FIELDS:
        path = getattr(getattr(scenario, section), key)
        if path:
            try:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError as e:
                digest = f"unreadable ({e.strerror})"
            found[f"{section}.{key}"] = {"path": path, "sha256": digest}
    return found


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file paths a scenario names absolute, relative to ``base``."""
    for section, key in PATH_FIELDS:
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            table[key] = os.path.abspath(os.path.join(base, os.path.expanduser(table[key])))
    return raw


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override (``--set``) and validate a scenario file."""
    path = Path(path)
    raw = resolve_paths(read_toml(path), path.parent)
    raw = resolve_paths(apply_overrides(raw, overrides or []), Path.cwd())
    return validate_scenario(raw, shown(str(path)), overrides)
