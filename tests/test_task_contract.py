"""The task contract: registered tasks are whole `Task`s, each takes its own config section, a key of
another task's section stops the run before any work, and distillation is a task of its own."""

from __future__ import annotations

import pytest
import torch
import yaml

from codecloop.tasks import Task, get_task_class, register_task, task_names
from codecloop.tasks.classification import ClassificationTask
from codecloop.tasks.distillation import DistillationTask, distillation_kl
from codecloop.trainers.config import Config, config_keys, run_keys, save_yaml
from codecloop.trainers.protocol import make_task
from tests.conftest import TINY


def test_a_class_that_is_not_a_task_cannot_be_registered():
    class Plain:
        pass

    with pytest.raises(TypeError, match="task 'plain': .*Plain.* is not a subclass of codecloop.tasks.Task"):
        register_task("plain")(Plain)
    assert "plain" not in task_names()


def test_a_task_missing_hooks_or_its_section_cannot_be_registered():
    class Partial(Task):
        def has_split(self, split: str) -> bool:
            return True

    with pytest.raises(TypeError, match=r"task 'partial': .*Partial does not implement batches, create_model, "
                                        r"forward, predict, sample_index, sample_metrics"):
        register_task("partial")(Partial)

    class Sectionless(ClassificationTask):
        config_keys = ("model",)

    with pytest.raises(TypeError, match=r"task 'sectionless': .*Sectionless.config_keys must be a tuple of config "
                                        r"key names holding 'data', got \('model',\)"):
        register_task("sectionless")(Sectionless)
    assert "partial" not in task_names() and "sectionless" not in task_names()


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="task 'classification' is already registered by ClassificationTask"):
        register_task("classification")(ClassificationTask)


@pytest.mark.parametrize("name", task_names())
def test_every_task_is_a_task_and_its_section_holds_config_keys(name):
    task_class = get_task_class(name)
    assert issubclass(task_class, Task) and task_class.name == name
    assert set(task_class.config_keys) <= set(config_keys()), name
    assert len(set(task_class.config_keys)) == len(task_class.config_keys), name
    assert set(task_class.config_keys) <= set(run_keys(name))


def test_min_scale_is_one_key_with_the_task_s_own_default(image_folder, tmp_path):
    from codecloop.synthetic import make_synthetic

    classification = make_task(Config(task="classification", data=str(image_folder), model="test_efficientnet"))
    assert classification.geometry.min_scale == 0.08
    root = make_synthetic("segmentation", tmp_path / "seg", train=2, val=1, height=32, width=40)
    assert make_task(Config(task="segmentation", data=str(root))).geometry.min_scale == 0.35
    assert make_task(Config(task="segmentation", data=str(root), min_scale=0.5)).geometry.min_scale == 0.5
    assert "min_area" not in config_keys()


def _refused(run_cli, *args, message: str) -> None:
    status, _, err = run_cli(*args)
    assert status == 2, err
    assert message in err, err


@pytest.mark.parametrize("flag", [["--eigen_crop", "true"], ["--eigen_crop", "false"], ["--eigen-crop"]])
def test_another_task_s_key_on_the_command_line_stops_before_any_work(flag, image_folder, tmp_path, run_cli):
    out = tmp_path / "run"
    _refused(run_cli, "train", "--task", "classification", "--data", image_folder, *TINY, *flag, "--out", out,
             message="config key 'eigen_crop' is not taken by task 'classification' (it takes: data, model, ")
    assert not out.exists()
    _refused(run_cli, "train", "--task", "classification", "--data", image_folder, *TINY, *flag, "--out", out,
             message="'eigen_crop' is taken by: depth)")
    assert not out.exists()


def test_another_task_s_key_in_a_config_file_is_named_with_the_file(image_folder, tmp_path, run_cli):
    config = tmp_path / "run.yaml"
    config.write_text("task: segmentation\nresize_size: 300\n")
    out = tmp_path / "run"
    _refused(run_cli, "train", "--config", config, "--data", image_folder, *TINY[:2], "--out", out,
             message=f"config file {config}: config key 'resize_size' is not taken by task 'segmentation' "
                     "(it takes: data, model, pretrained, num_classes, input_size, crop_size, min_scale, ")
    assert not out.exists()


def test_another_task_s_key_set_in_code_is_refused_when_the_task_is_built(image_folder):
    with pytest.raises(ValueError, match="config key 'frames' is not taken by task 'classification'"):
        make_task(Config(task="classification", data=str(image_folder), frames=8))


def test_saved_config_holds_the_generic_keys_and_the_task_s_own(tmp_path):
    path = tmp_path / "config.yaml"
    save_yaml(Config(task="depth", data="d", eigen_crop=True), path)
    saved = yaml.safe_load(path.read_text())
    assert saved["eigen_crop"] is True and saved["lr"] == Config().lr and saved["min_scale"] is None
    assert not {"resize_size", "normalize", "frames", "mask_folder", "codec_placement"} & set(saved)
    assert list(saved) == run_keys("depth")


def test_resume_with_the_saved_config_file(image_folder, tmp_path, run_cli):
    out = tmp_path / "run"
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--max_steps", "3", "--checkpoint_every", "1",
                             "--keep_checkpoints", "5", "--batch_size", "4", "--out", out)
    assert status == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert "eigen_crop" not in saved and saved["task"] == "classification"
    for name in ("step_00000003", "step_00000002"):
        for path in sorted((out / "checkpoints" / name).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (out / "checkpoints" / name).rmdir()
    status, _, err = run_cli("train", "--config", out / "config.yaml", "--resume")
    assert status == 0, err
    assert (out / "checkpoints" / "step_00000003").is_dir()


def test_help_lists_the_task_s_own_keys(run_cli, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    with pytest.raises(SystemExit):
        run_cli("train", "--task", "depth", "--help")
    depth = capsys.readouterr().out
    assert "keys of task depth" in depth and "--eigen_crop" in depth and "--min_scale" in depth
    assert "--normalize" not in depth and "--resize_size" not in depth and "--frames" not in depth
    assert "(default: unet_resnet18)" in depth
    with pytest.raises(SystemExit):
        run_cli("train", "--task", "classification", "--help")
    classification = capsys.readouterr().out
    assert "--normalize" in classification and "--eigen_crop" not in classification
    assert "(default: resnet50)" in classification
    with pytest.raises(SystemExit):
        run_cli("train", "--help")
    every = capsys.readouterr().out
    assert "task keys (each task takes its own)" in every and "[depth] depth: evaluate inside" in every


def test_distillation_learns_the_teacher_s_view(image_folder):
    student = ClassificationTask(image_folder, model="test_efficientnet", crop_size=32, resize_size=40)
    torch.manual_seed(0)
    teacher = student.create_model()
    files = student.sample_index("val").files
    probs = torch.softmax(torch.randn(len(files), student.num_classes), dim=1)
    task = DistillationTask(student, teacher, {"val": (files, probs)})
    index = task.sample_index("val")
    assert task.has_split("val") and not task.has_split("train")
    assert torch.equal(index.targets["label"], probs.argmax(dim=1)) and torch.equal(index.targets["soft_label"], probs)
    model = student.create_model().eval()
    image, clean = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    batch = {"image": image, "clean_image": clean, "soft_label": probs[:2], "label": probs[:2].argmax(dim=1)}
    with torch.no_grad():
        from_teacher = distillation_kl(model(image), teacher(clean).softmax(dim=1)).mean()
        cached = distillation_kl(model(image), probs[:2]).mean()
        assert torch.allclose(task.forward(model, batch)["loss"], from_teacher)
        assert torch.allclose(task.forward(model, {k: v for k, v in batch.items() if k != "clean_image"})["loss"],
                              cached)
        metrics = task.sample_metrics(model(image), batch)
    assert set(metrics) == {"top1", "top5", "loss", "kl"} and torch.allclose(metrics["kl"].mean(), cached)
    assert not any(hasattr(ClassificationTask, name) for name in ("needs_clean_view", "distillation_kl"))
