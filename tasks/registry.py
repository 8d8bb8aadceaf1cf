"""One explicit registry of tasks; `register_task` refuses a name twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_TASKS: dict[str, type] = {}


def register_task(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator that files a task class under `name`."""

    def decorate(task_class: type[T]) -> type[T]:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__qualname__}")
        _TASKS[name] = task_class
        task_class.name = name
        return task_class

    return decorate


def get_task_class(name: str) -> type:
    """The task class registered as `name`, or a ValueError listing the known tasks."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_TASKS)
