"""Generation's settings declared once: ``generate``'s and ``evaluate``'s flags come from the config
models (`GenerateConfig`, `EvaluateConfig` reusing `GenerationSettings`), and the sampler fallbacks
(25 / 7.5, or the model's recorded ones) resolve in one function. Parsers only: no model is built."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from denseface.cli import main, parser
from denseface.config import add_flags, flag, flag_values, load_model_config
from denseface.evaluate.config import EvaluateConfig
from denseface.generation.config import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    GenerateConfig,
    GenerationSettings,
    sampler_settings,
)
from denseface.model.dense_face import DenseFaceConfig

GENERATE_FLAGS = ("--prompt --reference --target --pretrained --weights --id-backend --id-weights --negative-prompt "
                  "--steps --guidance --seed --size --strength --face-box --device --fp16 --out").split()


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in p._actions if a.option_strings and a.dest != "help"}


def test_generate_flags_are_the_config_fields_with_todays_names_and_defaults():
    p = _subparser("generate")
    assert sorted(_flags(p)) == sorted(GENERATE_FLAGS)
    args = p.parse_args(["--reference", "me.jpg", "--out", "o.png", "--prompt", "a photo of *", "--steps", "3",
                         "--face-box", "1,2,30,40", "--id-backend", "irse50", "--fp16"])
    cfg = load_model_config(GenerateConfig, None, **flag_values(args, GenerateConfig))
    assert (cfg.reference, cfg.out, cfg.prompt, cfg.steps, cfg.face_box, cfg.id_backend, cfg.fp16) == (
        Path("me.jpg"), Path("o.png"), "a photo of *", 3, (1.0, 2.0, 30.0, 40.0), "irse50", True)
    assert (cfg.seed, cfg.strength, cfg.negative_prompt, cfg.guidance, cfg.target, cfg.size) == (0, 1.0, "", None,
                                                                                                  None, None)
    for missing in (["--out", "o.png"], ["--reference", "me.jpg"]):  # --reference and --out stay required
        with pytest.raises(SystemExit):
            p.parse_args(missing)
    with pytest.raises(SystemExit):
        p.parse_args(["--reference", "r", "--out", "o", "--id-backend", "facenet"])


def test_a_bad_face_box_is_one_error_line(tmp_path, capsys):
    rc = main(["generate", "--prompt", "a face", "--reference", "me.jpg", "--face-box", "1,2,3",
               "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "--face-box wants x0,y0,x1,y1 in pixels, got '1,2,3'" in err
    assert not (tmp_path / "o.png").exists()


def test_evaluate_reuses_the_generation_settings():
    ev, gen = _flags(_subparser("evaluate")), _flags(_subparser("generate"))
    shared = ["--" + name.replace("_", "-") for name in GenerationSettings.model_fields]
    assert shared and all(ev[f].help == gen[f].help and ev[f].default is None for f in shared)
    assert issubclass(EvaluateConfig, GenerationSettings) and issubclass(GenerateConfig, GenerationSettings)
    args = _subparser("evaluate").parse_args(["--subjects", "s", "--out", "o", "--steps", "2", "--clip", "c"])
    cfg = load_model_config(EvaluateConfig, None, **flag_values(args, EvaluateConfig))
    assert (cfg.steps, cfg.guidance, cfg.seed, cfg.n, cfg.metrics) == (2, None, 0, 4, None)
    assert "(default 4)" in ev["--n"].help and "(default facebook/dino-vits16)" in ev["--dino"].help


def test_sampler_fallbacks_are_resolved_in_one_place():
    plain = DenseFaceConfig(id_dim=128)
    released = DenseFaceConfig(id_dim=512, extra={"sampler": {"steps": 50, "guidance": 4.0, "eta": 1.0}})
    assert (DEFAULT_STEPS, DEFAULT_GUIDANCE) == (25, 7.5)
    assert sampler_settings(plain) == (25, 7.5)
    assert sampler_settings(released) == (50, 4.0)
    assert sampler_settings(released, 8, 0.0) == (8, 0.0)  # given values win; guidance 0 is a value
    assert sampler_settings(plain, None, 2.5) == (25, 2.5)


def test_required_and_structured_fields_become_flags():
    from pydantic import BaseModel

    class Demo(BaseModel):
        box: tuple[int, int] | None = flag(None, help="two numbers", metavar="A,B")
        out: Path = flag(help="where")
        seed: int = flag(0, help="random seed")

    p = argparse.ArgumentParser()
    add_flags(p, Demo)
    flags = _flags(p)
    assert flags["--out"].required and flags["--out"].help == "where"  # no "(default PydanticUndefined)"
    assert flags["--seed"].help == "random seed (default 0)"
    assert flags["--box"].type is str  # text, for the model's validator
    assert p.parse_args(["--out", "x", "--box", "1,2"]).box == "1,2"
    with pytest.raises(SystemExit):
        p.parse_args(["--box", "1,2"])
