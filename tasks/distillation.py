"""Distillation: a classification task trained against a teacher network instead of labels.

`DistillationTask` wraps a `ClassificationTask` (the student's data, pipeline and model) and owns the
teacher. Targets are the teacher's: ``label`` is its top-1 and ``soft_label`` its probabilities on the
clean evaluation view of each image, computed once by the caller. Training asks the student's pipeline
for the clean copy of every (randomly cropped, flipped, compressed) view and runs the teacher on it, so
the targets always match the view the student sees; the loss is the KL divergence to them. Metrics are
the student's (``top1`` against the teacher's top-1) and ``kl``. It is not registered: it needs a
teacher and its outputs, which no config key names (``codecloop demo`` builds one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codecloop.dali_pipes import Codec, ImageBatches, LevelSpec, PipelineRuntime, SweepBatches
from codecloop.dali_pipes.rates import RateSource
from codecloop.tasks.base import Task
from codecloop.tasks.classification import ClassificationTask
from codecloop.tasks.sample_index import SampleIndex

TeacherOutputs = dict[str, tuple[list[str], torch.Tensor]]


def distillation_kl(logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(teacher || student) in nats."""
    log_student = F.log_softmax(logits.float(), dim=1)
    return F.kl_div(log_student, teacher_probs.float(), reduction="none").sum(dim=1)


class DistillationTask(Task):
    """`student`'s classification against `teacher`; `outputs` maps a split to its files and the teacher's
    probabilities on their clean evaluation views."""

    name = "distillation"
    config_keys = ClassificationTask.config_keys
    default_model = ClassificationTask.default_model
    model_help = ClassificationTask.model_help
    primary_metric = ClassificationTask.primary_metric
    higher_is_better = ClassificationTask.higher_is_better
    media = ClassificationTask.media
    memory_format = ClassificationTask.memory_format
    clean_view = True

    def __init__(self, student: ClassificationTask, teacher: torch.nn.Module, outputs: TeacherOutputs) -> None:
        self.student, self.outputs, self.root = student, outputs, student.root
        self.teacher = teacher.eval().requires_grad_(False).to(memory_format=torch.channels_last)

    def has_split(self, split: str) -> bool:
        """Whether the teacher's outputs cover `split`."""
        return split in self.outputs

    def sample_index(self, split: str) -> SampleIndex:
        """The files of `split` with the teacher's top-1 (``label``) and probabilities (``soft_label``)."""
        files, probs = self.outputs[split]
        return SampleIndex(split, files, {"label": probs.argmax(dim=1), "soft_label": probs})

    def batches(self, index: SampleIndex, *, training: bool, spec: LevelSpec, codec: Codec, runtime: PipelineRuntime,
                checkpoint: bytes | str | None = None, with_clean: bool = False) -> ImageBatches:
        """The student's batches; training ones (and any with `with_clean`) also carry the clean view
        (``clean_image``) for the teacher."""
        return self.student.batches(index, training=training, spec=spec, codec=codec, runtime=runtime,
                                    checkpoint=checkpoint, with_clean=training or with_clean)

    def sweep_batches(self, index: SampleIndex, levels: list[int], codec: Codec,
                      runtime: PipelineRuntime) -> SweepBatches | None:
        """The student's one-pass sweep batches."""
        return self.student.sweep_batches(index, levels, codec, runtime)

    def rate_source(self, index: SampleIndex) -> RateSource:
        """The student's images (or ladder clips)."""
        return self.student.rate_source(index)

    def create_model(self) -> torch.nn.Module:
        """A fresh student model."""
        return self.student.create_model()

    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student's logits."""
        return self.student.predict(model, batch)

    def teacher_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's probabilities on the batch's clean views, or the cached ones where it has none."""
        if "clean_image" not in batch:
            return batch["soft_label"]
        clean = batch["clean_image"]
        self.teacher.to(clean.device)
        with torch.no_grad(), torch.autocast(clean.device.type, torch.bfloat16, enabled=clean.is_cuda):
            return self.teacher(clean).float().softmax(dim=1)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """KL divergence to the teacher (mean over the batch) and the student's logits."""
        probs = self.teacher_probs(batch)
        logits = self.predict(model, batch)
        return {"loss": distillation_kl(logits, probs).mean(), "outputs": logits}

    def sample_metrics(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's metrics against the teacher's top-1, and ``kl`` to its probabilities."""
        return {**self.student.sample_metrics(logits, batch), "kl": distillation_kl(logits, batch["soft_label"])}
