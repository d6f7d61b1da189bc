"""The YAML config: validated, and a configured backend without weights fails before any work."""
from importlib import resources
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from denseface.config import BuildConfig, load_config
from denseface.etl.build import build_dataset
from denseface.etl.stages import STAGES, build_stages, stage_groups

DEFAULT = resources.files("denseface") / "configs" / "default.yaml"


def test_default_yaml_is_valid_and_offline(tmp_path):
    cfg = load_config(DEFAULT, sources=["casia:/x"], out=tmp_path)
    stages = build_stages(cfg)  # every default backend passes its start-up check here
    assert [s.name for s in stages] == [s.name for s in STAGES]
    assert len(stage_groups(stages)) == 1  # equal resources: one worker runs them all


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shard_sise: 10\n")
    with pytest.raises(ValidationError, match="shard_sise"):
        load_config(bad)
    bad.write_text("stages: {identity: {backend: dlib, batchsize: 3}}\n")
    with pytest.raises(ValidationError, match="batchsize"):
        load_config(bad)
    with pytest.raises(ValidationError, match="KIND:PATH"):
        BuildConfig(sources=["/just/a/path"])


@pytest.mark.parametrize("stage,conf,words", [
    ("restore", {"backend": "codeformer", "weights": "/nope/codeformer.pth"}, "/nope/codeformer.pth"),
    ("head_pose", {"backend": "hopenet", "weights": "/nope/hopenet.pkl"}, "/nope/hopenet.pkl"),
    ("head_pose", {"backend": "hopenet"}, "stages.head_pose.weights is unset"),
    ("identity", {"backend": "arcface", "weights": "/nope/w600k_r50.onnx"}, "/nope/w600k_r50.onnx"),
    ("captions", {"backend": "models", "options": {"clip": "/nope/clip",
                                                   "captioners": [{"name": "b", "kind": "blip",
                                                                   "path": "/nope/blip"}]}}, "/nope/blip"),
])
def test_missing_weights_fail_at_start_up_naming_the_path(tmp_path, sample_casia, stage, conf, words):
    out = tmp_path / "out"
    cfg = BuildConfig(sources=[f"casia:{sample_casia}"], out=out, runner="local", stages={stage: conf})
    with pytest.raises(FileNotFoundError, match=words.replace(".", r"\.")):
        build_dataset(cfg, progress=False)
    assert not out.exists()  # nothing was read or written


def test_gpu_stage_gets_its_own_worker_group():
    cfg = BuildConfig(stages={"captions": {"num_gpus": 1, "batch_size": 32}})
    groups = stage_groups(build_stages(cfg))
    assert [[s.name for s in g] for g in groups][-1] == ["captions"]
    assert len(groups) == 2
    assert yaml.safe_load(DEFAULT.read_text())["stages"]["identity"]["backend"] == "dlib"


def test_flags_come_from_the_model_fields_with_their_help_and_defaults():
    import argparse
    from typing import Literal

    from pydantic import BaseModel

    from denseface.config import add_flags, flag, flag_values, load_model_config

    class Demo(BaseModel):
        data: list[str] = flag(default_factory=lambda: ["here"], help="where", metavar="PATH")
        out_dir: Path | None = flag(None, help="run folder", name="--out")
        steps: int = flag(10, help="optimizer steps", ge=1)
        precision: Literal["no", "bf16"] = flag("no", help="mixed precision")
        tensorboard: bool = flag(True, help="write tensorboard logs")
        cpu: bool = flag(False, help="CPU only")
        not_a_flag: int = 3

    p = argparse.ArgumentParser()
    add_flags(p, Demo)
    help_text = p.format_help()
    assert "optimizer steps (default 10)" in help_text and "--no-tensorboard" in help_text
    assert "--not-a-flag" not in help_text and "--out" in help_text and "{no,bf16}" in help_text
    given = p.parse_args(["--data", "a", "--data", "b", "--steps", "5", "--no-tensorboard", "--out", "/r"])
    cfg = load_model_config(Demo, None, **flag_values(given, Demo))
    assert (cfg.data, cfg.out_dir, cfg.steps, cfg.tensorboard, cfg.cpu) == (["a", "b"], Path("/r"), 5, False, False)
    assert load_model_config(Demo, None, **flag_values(p.parse_args([]), Demo)) == Demo()
    with pytest.raises(SystemExit):
        p.parse_args(["--precision", "fp8"])
