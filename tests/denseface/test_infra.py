"""Cluster files are valid, and the build runs against a real multi-node local Ray cluster."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from denseface.config import BuildConfig
from denseface.etl.build import build_dataset
from denseface.shards.manifest import read_manifest
from denseface.shards.verify import verify_dataset

INFRA = Path(__file__).resolve().parents[2] / "infra"
PYPROJECT = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())


def test_ray_cluster_yaml_has_head_cpu_and_gpu_workers():
    cfg = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["cpu_worker"]["resources"]["CPU"] >= 1 and "GPU" not in types["cpu_worker"]["resources"]
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])


def test_rayjob_runs_make_build_dataset():
    job = yaml.safe_load((INFRA / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"].startswith("ray.io/")
    assert job["spec"]["entrypoint"].startswith("make build-dataset ")
    groups = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) >= 1
    ray_pin = job["spec"]["rayClusterSpec"]["rayVersion"]
    assert re.match(r"\d+\.\d+\.\d+$", ray_pin)


def test_dockerfile_installs_what_pyproject_pins():
    docker = (INFRA / "Dockerfile").read_text()
    make = (INFRA.parent / "Makefile").read_text()
    assert re.search(r"^FROM python:3\.11", docker, re.M)  # pyproject: requires-python 3.11
    assert "requires-python" in PYPROJECT["project"] and "3.11" in PYPROJECT["project"]["requires-python"]
    assert re.search(r"^RUN make venv\b", docker, re.M)  # the Makefile's install, nothing else
    torch_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert f"pip install --quiet {torch_pin}" in make
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        assert re.search(rf"^COPY {folder} {folder}$", docker, re.M), folder


@pytest.mark.ray
def test_build_on_a_two_node_local_ray_cluster(tmp_path, sample_casia, monkeypatch):
    """A real multi-node cluster (two raylets on this machine), joined through RAY_ADDRESS."""
    import ray
    import ray._private.state as ray_state  # the GCS actor table; the state API needs the dashboard
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        cfg = BuildConfig(sources=[f"casia:{sample_casia}"], out=tmp_path / "ray", runner="ray", workers=2,
                          shard_size=4)
        res = build_dataset(cfg, progress=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        workers = [a for a in ray_state.actors().values() if "MapWorker" in a["ActorClassName"]]
        assert len({a["Address"]["NodeID"] for a in workers}) == 2  # stage actors ran on both nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
    local = build_dataset(BuildConfig(sources=[f"casia:{sample_casia}"], out=tmp_path / "local", runner="local",
                                      shard_size=4), progress=False)
    assert res.balanced and (res.inputs, res.accepted) == (local.inputs, local.accepted)
    keep = [c for c in read_manifest(tmp_path / "local").columns if not c.startswith("t_")]
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "ray")[keep].sort_values("key").reset_index(drop=True),
                                  read_manifest(tmp_path / "local")[keep].sort_values("key").reset_index(drop=True))
    assert verify_dataset(tmp_path / "ray").ok


def test_multinode_launcher_runs_the_train_command():
    import subprocess

    script = INFRA / "train-multinode.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "accelerate launch" in text and "-m denseface.cli train" in text
    for flag in ("--num_machines", "--machine_rank", "--main_process_ip", "--num_processes"):
        assert flag in text
    from denseface.cli import parser

    args = parser().parse_args(["train", "--mixed-precision", "bf16", "--data", "x", "--out", "y"])
    assert args.mixed_precision == "bf16"  # the flag the launcher passes exists
    missing = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert missing.returncode != 0 and "NNODES" in missing.stderr
