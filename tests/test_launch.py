"""Launchers: multi-host detection, and the cluster scripts' commands (dry run: no cloud here)."""
import os
import subprocess

from llada_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_multihost_detection(monkeypatch):
    for k in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    assert not distributed.is_multihost_env()
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed.is_multihost_env()  # one SLURM task: no distributed runtime needed
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert distributed.is_multihost_env()
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2")
    assert not distributed.is_multihost_env()  # a single-host TPU VM
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert distributed.is_multihost_env()


def _dry(script, env, *args):
    out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1", **env}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_tpu_pod_runs_the_same_train_command_on_all_workers():
    lines = _dry("tpu_pod.sh", {"TPU_NAME": "pod", "ZONE": "z", "ACCELERATOR": "v5p-128"},
                 "--config=configs/llada_8b.py", "--workdir=gs://b/r")
    assert lines[0].startswith("gcloud compute tpus tpu-vm create pod --zone=z --accelerator-type=v5p-128")
    train = [l for l in lines if "llada\\ train" in l]
    assert len(train) == 1 and "--worker=all" in train[0] and "--config=configs/llada_8b.py" in train[0]


def test_multislice_adds_the_dcn_axis():
    lines = _dry("tpu_multislice.sh", {"NAME": "ms", "ZONE": "z", "ACCELERATOR": "v5e-256", "NUM_SLICES": "2"},
                 "--workdir=gs://b/r")
    assert "--node-count=2" in lines[0]
    train = [l for l in lines if "llada\\ train" in l]
    assert len(train) == 2 and all("--config.mesh.dcn_data=2" in l for l in train)
