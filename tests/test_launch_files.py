"""The launch recipes stay valid: accelerate configs load in accelerate, the shell scripts parse,
and the SLURM template, run against stand-in `srun` / `scontrol` / `python`, starts the launcher
with SLURM's rendezvous and a codecloop command line our parser accepts, forwards SIGTERM and
requeues the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from codecloop.launch.cli import build_parser, config_from_args

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
ACCELERATE_CONFIGS = sorted((LAUNCH / "accelerate").glob("*.yaml"))
SHELL_FILES = [LAUNCH / "torchrun.sh", LAUNCH / "slurm" / "codecloop.sbatch"]
NODES, GPUS, JOB_ID = 4, 8, 4242
USER_ARGS = ["train", "--data", "/data/imagenet", "--model", "resnet50", "--level", "5-95"]


def test_there_are_single_and_multi_node_configs():
    names = {path.name for path in ACCELERATE_CONFIGS}
    assert {"single_node_multi_gpu.yaml", "multi_node_multi_gpu.yaml"} <= names


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda path: path.name)
def test_accelerate_config_loads_in_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    values = yaml.safe_load(path.read_text())
    for key in ("compute_environment", "distributed_type", "num_machines", "machine_rank", "num_processes"):
        assert key in values, f"{path.name}: no {key}"
    config = ClusterConfig.from_yaml_file(str(path))  # refuses keys accelerate does not know
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.num_processes % config.num_machines == 0 and 0 <= config.machine_rank < config.num_machines
    header = path.read_text().split("\ncompute_environment")[0]
    assert f"accelerate launch --config_file launch/accelerate/{path.name}" in header
    if config.num_machines > 1:
        assert config.main_process_port and "--machine_rank" in header and "--main_process_ip" in header


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda path: path.name)
def test_shell_file_parses(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _write_stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def slurm(tmp_path):
    """A fake SLURM node: `srun` runs its command here as node 2, `scontrol` lists 4 hosts and records a
    requeue, and `python` records its arguments (and waits for SIGTERM when asked), except for ``-c``."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _write_stub(stubs / "srun", 'while [ "${1#--}" != "$1" ]; do shift; done\nSLURM_NODEID=2 exec "$@"\n')
    _write_stub(stubs / "scontrol", 'case "$1" in\n  show) printf "gpu%s\\n" 1 2 3 4 ;;\n'
                                    '  requeue) echo "$2" > "$STUB_DIR/requeued" ;;\nesac\n')
    _write_stub(stubs / "python", f'if [ "$1" = -c ]; then exec {sys.executable} "$@"; fi\n'
                                  'printf "%s\\0" "$@" > "$STUB_DIR/launched"\n'
                                  'trap \'echo TERM > "$STUB_DIR/signal"; exit 143\' TERM\n'
                                  'if [ -n "${STUB_WAIT:-}" ]; then while :; do sleep 0.05; done; fi\n')
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(PATH=f"{stubs}:{env['PATH']}", PYTHON=str(stubs / "python"), STUB_DIR=str(tmp_path),
               SLURM_JOB_ID=str(JOB_ID), SLURM_JOB_NAME="codecloop", SLURM_NNODES=str(NODES),
               SLURM_JOB_NODELIST="gpu[1-4]", SLURM_GPUS_ON_NODE=str(GPUS), SLURM_CPUS_ON_NODE="64")
    return env, tmp_path


def _launched(folder: Path) -> list[str]:
    return (folder / "launched").read_text().split("\0")[:-1]


def _codecloop_args(launched: list[str]) -> list[str]:
    position = launched.index("codecloop")
    assert launched[position - 1] == "-m"
    return launched[position + 1:]


def test_sbatch_starts_torchrun_with_slurms_rendezvous(slurm):
    env, folder = slurm
    result = subprocess.run(["bash", str(SHELL_FILES[1]), *USER_ARGS], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    launched = _launched(folder)
    assert launched[:2] == ["-m", "torch.distributed.run"]
    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser().parse_args(launched[2:])
    assert (torchrun.nnodes, torchrun.nproc_per_node, torchrun.rdzv_backend) == (str(NODES), str(GPUS), "c10d")
    assert torchrun.rdzv_endpoint == f"gpu1:{20000 + JOB_ID % 20000}" and torchrun.rdzv_id == str(JOB_ID)
    args = build_parser().parse_args(_codecloop_args(launched))
    config = config_from_args(args)
    assert args.command == "train" and config.resume and config.out == f"runs/codecloop-{JOB_ID}"
    assert config.data == "/data/imagenet" and config.level == "5-95"


def test_sbatch_accelerate_launcher_passes_this_nodes_rank(slurm):
    env, folder = slurm
    env["LAUNCHER"] = "accelerate"
    result = subprocess.run(["bash", str(SHELL_FILES[1]), *USER_ARGS, "--out", "runs/mine"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    launched = _launched(folder)
    assert launched[:2] == ["-m", "accelerate.commands.launch"]
    from accelerate.commands.launch import launch_command_parser

    accelerate = launch_command_parser().parse_args(launched[2:])
    assert (accelerate.num_machines, accelerate.num_processes, accelerate.machine_rank) == (NODES, NODES * GPUS, 2)
    assert accelerate.main_process_ip == "gpu1" and accelerate.module
    assert Path(accelerate.config_file) == LAUNCH / "accelerate" / "multi_node_multi_gpu.yaml"
    config = config_from_args(build_parser().parse_args(_codecloop_args(launched)))
    assert config.out == "runs/mine" and config.resume  # the user's --out wins over the job's default


def test_sbatch_refuses_a_command_that_cannot_resume(slurm):
    env, folder = slurm
    result = subprocess.run(["bash", str(SHELL_FILES[1]), "demo"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "usage: sbatch" in result.stderr
    assert not (folder / "launched").exists()


def test_sbatch_forwards_sigterm_and_requeues(slurm):
    env, folder = slurm
    env["STUB_WAIT"] = "1"
    job = subprocess.Popen(["bash", str(SHELL_FILES[1]), *USER_ARGS], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (folder / "launched").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (folder / "launched").exists()
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 143, stderr
    assert (folder / "signal").read_text().strip() == "TERM"
    assert (folder / "requeued").read_text().strip() == str(JOB_ID)
    assert "requeueing job" in stderr


def test_torchrun_recipe_needs_a_master_address_across_nodes(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "MASTER_"))}
    result = subprocess.run(["bash", str(SHELL_FILES[0]), "train"], env={**env, "NNODES": "2"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "MASTER_ADDR" in result.stderr


def test_torchrun_recipe_on_one_node_is_standalone(slurm):
    env, folder = slurm
    env = {key: value for key, value in env.items() if not key.startswith("SLURM_")}
    result = subprocess.run(["bash", str(SHELL_FILES[0]), *USER_ARGS], env={**env, "NPROC_PER_NODE": "3"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    launched = _launched(folder)
    assert launched[2:7] == ["--nnodes", "1", "--nproc_per_node", "3", "--standalone"]
    assert _codecloop_args(launched) == USER_ARGS
