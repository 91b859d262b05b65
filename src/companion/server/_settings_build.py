"""Validating settings as a whole, with errors that name each bad field and where its value
came from, and never quote a value or a line of a file (it may hold an API key)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["build", "where"]

S = TypeVar("S", bound=BaseModel)


def where(exc: Exception) -> str:
    # Where a file failed to parse, without yaml's quote of the line: it may hold an API key.
    if isinstance(exc, tomllib.TOMLDecodeError):
        return f" ({exc})"  # "Invalid value (at line 1, column 8)": no file content
    mark = getattr(exc, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def build(
    cls: type[S],
    base: S | None,
    values: Mapping[str, Any],
    origin: Mapping[str, str],
) -> S:
    """``base`` (defaults when ``None``) updated with ``values``, validated as a whole.

    Raises:
        ValueError: one line per bad field, naming it and where its value came from.
    """
    merged = {**(base.model_dump() if base is not None else {}), **values}
    try:
        return cls(**merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            name = ".".join(str(part) for part in err["loc"])
            source = origin.get(str(err["loc"][0])) if err["loc"] else None
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown server setting"
            if not name:  # a rule across fields (_tls_files_go_together): it names them
                problems.append(message)
                continue
            problems.append(f"{name}{f' ({source})' if source else ''}: {message}")
        raise ValueError("; ".join(problems)) from None
