"""SLURM rehearsed on local processes: `oie-jax train --distributed` started with the environment `srun`
gives each task (the SLURM_* variables JAX's cluster detection reads), as launch/gpu_slurm.sbatch starts
it: one task per node owning all of its node's devices. Each process must keep every local device (on
GPUs, JAX would otherwise restrict it to the one of SLURM_LOCALID; on this CPU, that restriction shows
in the `jax_cuda_visible_devices` it sets), and the losses equal one process with all the devices."""

import os
import subprocess
import sys

import numpy as np

from oie_jax.cli.train import slurm_node_devices
from tests.helpers import xla_flags
from tests.test_train_loop import ROOT, TINY, cli, losses

# The `oie-jax` command, then what JAX made of the cluster.
HARNESS = """
import sys, jax
from oie_jax.cli import main
code = main(sys.argv[1:])
print("VISIBLE", jax.config.values["jax_cuda_visible_devices"], jax.local_device_count(), jax.process_count())
sys.exit(code)
"""


def srun_env(task: int, tasks: int, nodes: int, devices_per_node: int, port: int) -> dict:
    """What srun sets for task `task` of a step of `tasks` tasks on `nodes` nodes, one node's GPUs each."""
    per_node = tasks // nodes
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": str(tasks),
            "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_NNODES": str(nodes), "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_PROCID": str(task),
            "SLURM_LOCALID": str(task % per_node), "SLURM_NODEID": str(task // per_node),
            "SLURM_GPUS_ON_NODE": str(devices_per_node), "JAX_COORDINATOR_PORT": str(port),
            "XLA_FLAGS": xla_flags(devices_per_node // per_node),
            "JAX_PLATFORMS": "cpu"}


def test_one_task_per_node_keeps_the_nodes_devices_one_task_per_gpu_lets_jax_choose():
    assert slurm_node_devices(srun_env(1, 2, 2, 8, 1)) == list(range(8))
    assert slurm_node_devices(srun_env(3, 16, 2, 8, 1)) is None  # JAX takes GPU SLURM_LOCALID
    assert slurm_node_devices({}) is None
    env = {k: v for k, v in srun_env(0, 2, 2, 8, 1).items() if k != "SLURM_GPUS_ON_NODE"}
    assert slurm_node_devices({**env, "CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == [0, 1, 2, 3]


def test_two_slurm_nodes_of_two_devices_train_like_one_process_of_four(tmp_path):
    port = 21000 + (os.getpid() + 6200) % 9000
    args = ["train", "--config", str(TINY), "--workdir", str(tmp_path / "slurm"), "--config.train.steps=4",
            "--config.eval.every=0", "--config.mesh.shape=(1, 2, 1)", "--config.mesh.dcn_shape=(1, 2, 1)",
            "--distributed"]
    procs = [subprocess.Popen([sys.executable, "-c", HARNESS, *args], cwd=ROOT, text=True,
                              env={**os.environ, **srun_env(task, 2, 2, 2, port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for task in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    for out, _ in outputs:  # both devices of the node in use, in a job of two processes
        assert "VISIBLE 0,1 2 2" in out, out[-2000:]
    one = cli("--config", TINY, "--workdir", tmp_path / "one", "--config.train.steps=4", "--config.eval.every=0",
              "--config.mesh.shape=(1, 4, 1)",
              env=dict(os.environ, XLA_FLAGS=xla_flags(4), JAX_PLATFORMS="cpu"))
    assert one.returncode == 0, one.stderr[-2000:]
    slurm, single = losses(tmp_path / "slurm"), losses(tmp_path / "one")
    assert sorted(slurm) == [1, 2, 3, 4]
    np.testing.assert_allclose([slurm[s] for s in range(1, 5)], [single[s] for s in range(1, 5)], rtol=1e-5)
