"""One namespace: every import name lives under `codecloop.`, so a user's own `tasks.py` or `launch/` never
collides with ours, and the built wheel puts nothing but `codecloop` at the top of site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("codecloop", "dali_pipes", "tasks", "trainers", "launch", "bench")


def _user_folder(tmp_path: Path) -> Path:
    """A working folder with a user's own `tasks.py`, `trainers.py`, `dali_pipes.py` and `launch/` package, each of
    which stops the process if imported."""
    for name in ("tasks", "trainers", "dali_pipes"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('the user module {name} was imported')\n")
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "__init__.py").write_text("raise SystemExit('the user package launch was imported')\n")
    return tmp_path


def test_cli_and_module_run_beside_a_users_tasks_and_launch(tmp_path):
    folder = _user_folder(tmp_path)
    script = Path(sys.executable).with_name("codecloop")
    for command in ([sys.executable, "-m", "codecloop"], [str(script)]):
        result = subprocess.run([*command, "make-synthetic", "--task", "depth", "--out", "data", "--train", "1",
                                 "--val", "1", "--size", "32x32"], cwd=folder, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "wrote a synthetic depth dataset" in result.stdout
        shutil.rmtree(folder / "data")
    own = subprocess.run([sys.executable, "-c", "import tasks"], cwd=folder, capture_output=True, text=True)
    assert "the user module tasks was imported" in own.stderr


def test_wheel_holds_only_the_codecloop_package(tmp_path):
    source = tmp_path / "source"
    for name in FOLDERS:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                             str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = zipfile.ZipFile(next((tmp_path / "wheel").glob("codecloop-*.whl")))
    names = wheel.namelist()
    assert {name.split("/")[0] for name in names} == {"codecloop", "codecloop-0.1.0.dist-info"}
    for module in ("codecloop/__main__.py", "codecloop/launch/cli.py", "codecloop/tasks/segmentation.py",
                   "codecloop/dali_pipes/pipelines.py", "codecloop/trainers/loop.py", "codecloop/bench/throughput.py",
                   "codecloop/demo/teacher.py", "codecloop/demo/packaged_data.py", "codecloop/synthetic/datasets.py",
                   "codecloop/synthetic/action.py",
                   "codecloop/launch/configs/classification.yaml", "codecloop/launch/torchrun.sh"):
        assert module in names, module
    entry_points = wheel.read("codecloop-0.1.0.dist-info/entry_points.txt").decode()
    assert "codecloop = codecloop.launch.cli:main" in entry_points
