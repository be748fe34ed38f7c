"""Reading a YAML data file into a validated model, with errors that name the file and the field.

The catalog's model files and the emulator's profile files are read the same way, so a
broken one is refused the same way: ``<file>: <field>: <problem>`` for every problem,
never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class DataFileError(ValueError):
    """A data file that does not hold what it must; ``problems`` are "field: problem" lines."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: {'; '.join(problems)}")


def read_mapping(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``, or DataFileError (unreadable, not YAML, not a mapping)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataFileError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DataFileError(path, [f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    if not isinstance(data, dict):
        raise DataFileError(path, [f"must be a YAML mapping, not {type(data).__name__}"])
    return {str(key): value for key, value in data.items()}


def invalid(path: Path, exc: ValidationError) -> DataFileError:
    """The DataFileError for a model that failed validation: one "field: problem" per error."""
    # Imported here: the API's error wording is reused, but the agent (which reads the catalog)
    # should not load every resource kind just to be ready for a broken file.
    from dpufleet.api.validation import describe_errors

    _summary, causes = describe_errors(exc)
    return DataFileError(path, [f"{c['field']}: {c['message']}" if c["field"] else c["message"] for c in causes])
