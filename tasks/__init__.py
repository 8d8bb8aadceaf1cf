"""Tasks: dataset format readers, model factories, losses and metrics, one module per task."""

from tasks import classification
from tasks.registry import get_task_class, register_task, task_names
from tasks.sample_index import SampleIndex

__all__ = ["SampleIndex", "classification", "get_task_class", "register_task", "task_names"]
