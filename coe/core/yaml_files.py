"""YAML files that become pydantic models: expert cards, configuration, benchmark definitions.

Every problem is reported against the file: where the YAML is broken (its line), a file that holds
no mapping of keys, and each field pydantic refuses, one line per field, as `file: key: problem`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from coe.core.errors import UserError

Model = TypeVar("Model", bound=BaseModel)


class YamlFileError(UserError, ValueError):
    """A YAML file that cannot become what it describes; `problems` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_yaml_model(path: str | os.PathLike[str], model: type[Model]) -> Model:
    """The file at `path` validated as `model`; raises YamlFileError."""
    document = _read_yaml(path)
    if document is None:
        raise YamlFileError([f"{path}: empty file: expected a mapping of keys ({model.__name__})"])
    try:
        return model.model_validate(_mapping(document, path))
    except ValidationError as error:
        raise YamlFileError(validation_problems(error, str(path))) from None


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The keys of a settings file at `path`, one layer of what becomes a model (an empty file sets
    none); raises YamlFileError."""
    document = _read_yaml(path)
    return {} if document is None else _mapping(document, path)


def validation_problems(error: ValidationError, source: str) -> list[str]:
    """One line per field pydantic refused, `source: key.path: problem`."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problem = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{source}: {key}: {problem}")
    return problems


def _read_yaml(path: str | os.PathLike[str]) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise YamlFileError([f"{path}: cannot read: {error.strerror or error}"]) from None
    except UnicodeDecodeError as error:
        raise YamlFileError([f"{path}: not UTF-8 text: {error}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise YamlFileError([_yaml_problem(error, path)]) from None


def _yaml_problem(error: yaml.YAMLError, path: str | os.PathLike[str]) -> str:
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: {error}"
    # str(error) locates the problem in "<unicode string>": this says where in the file instead.
    problem = f"{path} line {mark.line + 1}: not valid YAML: {error.problem} (column {mark.column + 1})"
    context, begun = getattr(error, "context", None), getattr(error, "context_mark", None)
    if not context:
        return problem
    started = f" started on line {begun.line + 1}" if begun and begun.line != mark.line else ""
    return f"{problem}, {context}{started}"


def _mapping(document: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise YamlFileError(
            [f"{path}: expected a mapping of keys at the top level, got {type(document).__name__}"]
        )
    return document
