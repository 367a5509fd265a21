"""Reading annotation files so that every problem names the file and the line (or JSON key)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.datasets.errors import AnnotationError


def require_file(path: Path, dataset: str, layout: str) -> Path:
    """`path` if it is a file; otherwise an error naming it and showing the expected layout."""
    if not path.is_file():
        raise AnnotationError(
            f"{path}: required file not found; a {dataset} root must look like this:\n{layout.strip()}"
        )
    return path


@dataclass(frozen=True)
class TableLine:
    """One line of a whitespace-separated annotation table, for parsing with good errors."""

    path: Path
    number: int
    """1-based line number in the file."""
    names: tuple[str, ...]
    fields: tuple[str, ...]

    def error(self, message: str) -> AnnotationError:
        return AnnotationError(f"{self.path}:{self.number}: {message}")

    def text(self, name: str) -> str:
        return self.fields[self.names.index(name)]

    def int(self, name: str) -> int:
        value = self.text(name)
        try:
            return int(value)
        except ValueError:
            raise self.error(f"{name} must be an integer, got {value!r}") from None

    def float(self, name: str) -> float:
        value = self.text(name)
        try:
            number = float(value)
        except ValueError:
            raise self.error(f"{name} must be a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise self.error(f"{name} must be a finite number, got {value!r}")
        return number


def read_table(path: Path, names: tuple[str, ...], rest: bool = False) -> list[TableLine]:
    """The non-blank lines of `path`, each split into exactly len(names) fields.

    rest: the last field takes the remainder of the line (names with spaces, such as
    CUB's part names).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split(maxsplit=len(names) - 1) if rest else raw.split()
        if len(fields) != len(names):
            raise AnnotationError(
                f"{path}:{number}: expected {len(names)} fields '{' '.join(names)}', got {len(fields)}"
            )
        lines.append(TableLine(path, number, names, tuple(fields)))
    if not lines:
        raise AnnotationError(f"{path}: empty file; expected lines of '{' '.join(names)}'")
    return lines


def load_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file and line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({exc.reason})") from None


def json_error(path: Path, key: str, message: str) -> AnnotationError:
    """An error about the value at `key` (a path such as 'S1/54138969/center') of a JSON file."""
    return AnnotationError(f"{path}: {key}: {message}")


def json_numbers(path: Path, key: str, value: Any, count: int) -> list[float]:
    """`value` as exactly `count` finite numbers, or an error naming the file and key."""
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(abs(float(v)) < float("inf") for v in value)
    ):
        raise json_error(path, key, f"expected a list of {count} numbers, got {value!r}")
    return [float(v) for v in value]
