"""Tasks: dataset format readers, model factories, losses and metrics, one module per task."""

from codecloop.tasks import action, classification, depth, detection, pose, segmentation
from codecloop.tasks.base import MetricAccumulator, Task
from codecloop.tasks.registry import get_task_class, register_task, task_names
from codecloop.tasks.sample_index import SampleIndex

__all__ = [
    "MetricAccumulator", "SampleIndex", "Task", "action", "classification", "depth", "detection", "get_task_class",
    "pose", "register_task", "segmentation", "task_names",
]
