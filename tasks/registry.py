"""One explicit registry of tasks; `register_task` refuses a name twice and a class that is not a whole `Task`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from codecloop.tasks.base import CLASS_ATTRIBUTES, Task

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator that files a task class under `name`: a concrete `Task` subclass with every
    class attribute of the contract, or a TypeError naming the class and what it lacks."""

    def decorate(task_class: type[Task]) -> type[Task]:
        if not (isinstance(task_class, type) and issubclass(task_class, Task)):
            raise TypeError(f"task {name!r}: {task_class!r} is not a subclass of codecloop.tasks.Task")
        if inspect.isabstract(task_class):
            missing = ", ".join(sorted(task_class.__abstractmethods__))
            raise TypeError(f"task {name!r}: {task_class.__qualname__} does not implement {missing}")
        lacking = [attribute for attribute in CLASS_ATTRIBUTES if not hasattr(task_class, attribute)]
        if lacking:
            raise TypeError(f"task {name!r}: {task_class.__qualname__} does not set {', '.join(lacking)}")
        if not isinstance(task_class.config_keys, tuple) or "data" not in task_class.config_keys:
            raise TypeError(f"task {name!r}: {task_class.__qualname__}.config_keys must be a tuple of config key "
                            f"names holding 'data', got {task_class.config_keys!r}")
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__qualname__}")
        _TASKS[name] = task_class
        task_class.name = name
        return task_class

    return decorate


def get_task_class(name: str) -> type[Task]:
    """The task class registered as `name`, or a ValueError listing the known tasks."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_TASKS)
