"""Each setting declared once: the build's and the trainer's flags come from their config models,
backend names are checked when the config loads, the Ray resource keys come from `StageConfig`,
and none of it changes the fingerprint an existing dataset was built under."""
from __future__ import annotations

from pathlib import Path

import pytest

from denseface.cli import _build_config, _train_config, main, parser
from denseface.config import BuildConfig, StageConfig, load_config
from denseface.etl.stages import build_fingerprint, build_stages, stage_groups


def test_build_flags_override_the_yaml_and_keep_the_rest(tmp_path, capsys):
    (tmp_path / "b.yaml").write_text("shard_size: 7\ncrop_size: 256\n")
    args = parser().parse_args(["build-dataset", "--config", str(tmp_path / "b.yaml"), "--source", "casia:/a",
                                "--source", "folder:/b", "--out", "/o", "--runner", "local"])
    cfg = _build_config(args)
    assert (cfg.sources, cfg.out, cfg.shard_size, cfg.crop_size, cfg.runner) == \
        (["casia:/a", "folder:/b"], Path("/o"), 7, 256, "local")
    assert _build_config(parser().parse_args(["build-dataset", "--shard-size", "3"])).shard_size == 3
    with pytest.raises(SystemExit):
        main(["build-dataset", "--help"])
    assert "inputs per shard / work unit (default 1000)" in capsys.readouterr().out


def test_train_bad_shards_flag_sets_skip():
    assert _train_config(parser().parse_args(["train", "--skip-bad-shards"])).bad_shards == "skip"
    assert _train_config(parser().parse_args(["train"])).bad_shards == "stop"


def test_an_unknown_backend_is_one_error_line_at_load(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: {restore: {backend: gfpgan}, identity: {backend: arcface}}\n")
    assert main(["build-dataset", "--config", str(bad), "--source", "casia:/nowhere", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: invalid configuration: stages.restore.backend: unknown backend 'gfpgan'; restore's "
                   "backends are none, codeformer (leave it out for none)"]
    assert not (tmp_path / "out").exists()


def test_backend_default_means_unset_and_is_written_as_before():
    said, unset = BuildConfig(stages={"identity": {"backend": "default"}}), BuildConfig(stages={"identity": {}})
    assert said == unset and said.stages["identity"].backend is None
    assert said.model_dump()["stages"]["identity"]["backend"] == "default"
    assert {s.name: s.backend for s in build_stages(said)}["identity"] == "dlib"
    # a stage with one implementation: its one backend is named "default"; no other name passes
    with pytest.raises(ValueError, match="detect_align's backends are default"):
        BuildConfig(stages={"detect_align": {"backend": "mediapipe"}})


@pytest.mark.parametrize("preset,fingerprint", [(None, "eab97c2bafd5927df15416a8b5c1b1f2f65499fc"),
                                                ("default", "4319a5b5fc7cb566a722724bdef8bb511e985ec5")])
def test_existing_builds_keep_their_fingerprint(preset, fingerprint):
    """The fingerprints builds recorded (plan.json) before a backend could be unset (None) and the
    resource keys came from `StageConfig`: an existing dataset resumes instead of being rebuilt."""
    cfg = load_config(preset, sources=["casia:/x"], out=Path("/o"), runner="local")
    assert build_fingerprint(cfg, build_stages(cfg)) == fingerprint


def test_ray_resources_group_stages_but_do_not_decide_the_bytes():
    base = BuildConfig(stages={"captions": StageConfig()})
    fp = build_fingerprint(base, build_stages(base))
    for key, value in (("num_cpus", 2.0), ("num_gpus", 1.0), ("batch_size", 4), ("concurrency", 3)):
        cfg = BuildConfig(stages={"captions": StageConfig(**{key: value})})
        stages = build_stages(cfg)
        assert build_fingerprint(cfg, stages) == fp, key
        assert len(stage_groups(stages)) == 2, key  # captions runs in its own worker group
    cfg = BuildConfig(stages={"captions": StageConfig(options={"keep": 2})})
    assert build_fingerprint(cfg, build_stages(cfg)) != fp
