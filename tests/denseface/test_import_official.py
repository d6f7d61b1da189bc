"""import-official on a tiny random checkpoint in the released LDM/ControlNet layout, written here.

The checkpoint is made from tiny diffusers models whose parameter names are turned into the LDM names
(the openaimodel / ControlNet / LDM-VAE layout), plus the Dense-Face keys as the release names them.
The import must give back exactly those models' weights (so each key landed in its place, once)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from denseface.cli import main
from denseface.generation.pipeline import DENSE_FACE_FOLDER, DenseFacePipeline
from denseface.import_official import ADAPTER_NAMES, DROPPED_EXACT, IRSE50_FILE, RELEASE_POSE_IMAGE, import_official
from denseface.model.irse50 import IRSE50
from denseface.model.pose_branch import PoseBranch
from denseface.model.tiny_sd import build_tiny_tokenizer

N = 1  # num_res_blocks
HINT = (8, 16, 16, 32)
ORIGINAL = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
    "unet_config": {"params": {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                               "attention_resolutions": [1], "num_res_blocks": N, "channel_mult": [1, 2],
                               "num_heads": 2, "use_spatial_transformer": True, "transformer_depth": 1,
                               "context_dim": 32, "legacy": False}},
    "control_stage_config": {"params": {"image_size": 8, "in_channels": 4, "hint_channels": 3, "model_channels": 32,
                                        "attention_resolutions": [1], "num_res_blocks": N, "channel_mult": [1, 2],
                                        "num_heads": 2, "use_spatial_transformer": True, "transformer_depth": 1,
                                        "context_dim": 32, "legacy": False}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}},
}}}
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def ldm_unet_name(key: str, up_has_attention: dict[int, bool]) -> str:
    """diffusers UNet/ControlNet parameter name -> openaimodel name (the inverse of diffusers' conversion)."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "controlnet_mid_block": "middle_block_out.0", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * (2 * len(HINT) - 1)}"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"input_blocks.{(N + 1) * i + j + 1}.0."),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.", lambda i, j: f"input_blocks.{(N + 1) * i + j + 1}.1."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.", lambda i: f"input_blocks.{(N + 1) * (i + 1)}.0.op."),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"output_blocks.{(N + 1) * i + j}.0."),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.", lambda i, j: f"output_blocks.{(N + 1) * i + j}.1."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.",
         lambda i: f"output_blocks.{(N + 1) * i + N}.{2 if up_has_attention[i] else 1}."),
        (r"mid_block\.attentions\.0\.", lambda: "middle_block.1."),
        (r"controlnet_down_blocks\.(\d+)\.", lambda i: f"zero_convs.{i}.0."),
        (r"controlnet_cond_embedding\.blocks\.(\d+)\.", lambda i: f"input_hint_block.{2 * (i + 1)}."),
    ]
    for pattern, new in rules:
        m = re.match(pattern, key)
        if m:
            rest = key[m.end():]
            if "resnets" in pattern:
                head, leaf = rest.split(".", 1)
                rest = f"{RESNET[head]}.{leaf}"
            return new(*map(int, m.groups())) + rest
    raise KeyError(key)


def ldm_mid_resnet(key: str, attention: bool) -> str | None:
    m = re.match(r"mid_block\.resnets\.(\d+)\.(\w+)\.(.*)", key)
    if not m:
        return None
    j = int(m.group(1))
    return f"middle_block.{2 * j if attention else j}.{RESNET[m.group(2)]}.{m.group(3)}"


def to_ldm(state: dict, up_has_attention: dict[int, bool], attention_mid: bool = True) -> dict:
    return {(ldm_mid_resnet(k, attention_mid) or ldm_unet_name(k, up_has_attention)): v for k, v in state.items()}


def ldm_vae(state: dict, levels: int) -> dict:
    out = {}
    for key, v in state.items():
        k = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                   lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", k)
        attn = re.match(r"(.*)mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", k)
        if attn:
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[attn.group(2)]
            k = f"{attn.group(1)}mid.attn_1.{name}.{attn.group(3)}"
            if name != "norm" and v.ndim == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + k] = v
    return out


def release_checkpoint(tmp_path):
    """A tiny random checkpoint in the released layout, and the diffusers models it was made from."""
    torch.manual_seed(0)
    original = tmp_path / "tiny.yaml"
    original.write_text(yaml.safe_dump(ORIGINAL))
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(ORIGINAL, {})
    unet = UNet2DConditionModel(**unet_cfg).eval()
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    up_attn = {i: t.startswith("CrossAttn") for i, t in enumerate(unet_cfg["up_block_types"])}
    state = {"model.diffusion_model." + k: v for k, v in to_ldm(unet.state_dict(), up_attn).items()}

    adapters = {}
    for name, module in unet.named_modules():
        if not name.endswith(("attn1", "attn2")):
            continue
        qd, inner, cd = module.to_q.in_features, module.to_q.out_features, module.to_k.in_features
        ldm = to_ldm({name + ".x": torch.zeros(1)}, up_attn)
        prefix = "model.diffusion_model." + next(iter(ldm))[:-2]
        for src, shape in (("per_q", (inner, qd)), ("per_k", (inner, cd)), ("per_v", (inner, cd)),
                           ("feat_to_q", (qd, 512))):
            adapters[f"{prefix}.{src}.weight"] = torch.randn(shape) * 0.1
    state.update(adapters)

    unet_for_pose = UNet2DConditionModel(**unet_cfg)
    pose = PoseBranch(unet_for_pose, zero_conv=True, attention=False, pose_embed_channels=HINT).net
    for p in pose.parameters():
        torch.nn.init.normal_(p, std=0.05)
    state.update({"control_model." + k: v for k, v in to_ldm(pose.state_dict(), {}, attention_mid=False).items()})

    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(ORIGINAL, {})
    vae = AutoencoderKL(**vae_cfg).eval()
    state.update(ldm_vae(vae.state_dict(), len(vae_cfg["block_out_channels"])))

    tokenizer = build_tiny_tokenizer(("person",) + ("a", "photo", "of"))
    text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    text = CLIPTextModel(text_cfg).eval()
    clip_dir = tmp_path / "clip"
    text_cfg.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    state.update({"cond_stage_model.transformer." + k: v for k, v in text.state_dict().items()})

    state["embedding_manager.projector.weight"] = torch.randn(32, 512) * 0.1
    bn = torch.nn.BatchNorm1d(32)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    state.update({f"embedding_manager.projector_norm.{k}": v for k, v in bn.state_dict().items()})
    state["embedding_manager.string_to_param_dict.*"] = torch.randn(1, 32)
    facenet = IRSE50()  # full size: generation's identity stage loads the real architecture
    state.update({f"id_loss_func.facenet.{k}": v for k, v in facenet.state_dict().items()})
    for name in ("betas", "alphas_cumprod", "posterior_variance"):
        state[name] = torch.rand(1000)
    assert set(DROPPED_EXACT) >= {"betas", "alphas_cumprod", "posterior_variance"}
    ckpt = tmp_path / "dense_face.ckpt"
    torch.save({"state_dict": state, "global_step": 1}, ckpt)
    return dict(ckpt=ckpt, original=original, clip=clip_dir, unet=unet, pose=pose, vae=vae, text=text,
                facenet=facenet, state=state, adapters=adapters)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official")
    made = release_checkpoint(tmp)
    report = import_official(made["ckpt"], tmp / "out", made["original"], str(made["clip"]))
    return made, report, tmp / "out"


def same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_every_key_consumed_once_or_dropped(imported):
    made, report, _ = imported
    consumed = [k for keys in report.consumed.values() for k in keys]
    assert len(consumed) == len(set(consumed))
    assert not report.unused
    assert set(consumed) | set(report.dropped) == set(made["state"])
    assert not set(consumed) & set(report.dropped)
    assert "embedding_manager.string_to_param_dict.*" in report.dropped
    mid_feat = [k for k in made["adapters"] if "middle_block" in k and "feat_to_q" in k]
    assert mid_feat and set(mid_feat) <= set(report.dropped)  # the mid block gets no c_id


def test_sd_parts_and_pose_branch_equal_their_sources(imported):
    made, _, out = imported
    pipe = DenseFacePipeline.from_pretrained(str(out))
    same_state(pipe.unet.state_dict(), made["unet"].state_dict())
    same_state(pipe.vae.state_dict(), made["vae"].state_dict())
    text = {k: v for k, v in made["text"].state_dict().items()}
    same_state({k: v for k, v in pipe.text_encoder.state_dict().items()}, text)
    same_state(pipe.dense_face.pose_branch.net.state_dict(), made["pose"].state_dict())
    cfg = pipe.dense_face.config
    assert (cfg.pose_attention, cfg.adapter_layers, cfg.adapter_scale, cfg.adapter_query_from_identity,
            cfg.id_projector, cfg.anchor_word, cfg.pose_embed_channels) == (False, "all", 0.01, True, "linear_bn",
                                                                             "person", HINT)
    assert cfg.extra["id_backend"] == "irse50" and cfg.extra["sampler"]["steps"] == 50


def test_adapters_and_identity_land_in_place(imported):
    made, _, out = imported
    pipe = DenseFacePipeline.from_pretrained(str(out))
    adapter = pipe.dense_face.pc_adapter
    for key, value in made["adapters"].items():
        if "middle_block" in key and "feat_to_q" in key:
            continue
        layer, src, _ = key.rsplit(".", 2)
        found = [p for name, p in adapter.named_parameters() if name.endswith(f".{ADAPTER_NAMES[src]}.weight")
                 and torch.equal(p, value)]
        assert len(found) == 1, key
    mlp = pipe.dense_face.identity.mlp
    assert torch.equal(mlp[0].weight, made["state"]["embedding_manager.projector.weight"])
    assert torch.equal(mlp[1].running_var, made["state"]["embedding_manager.projector_norm.running_var"])


def test_irse50_loads_strictly_from_the_checkpoint_keys(imported):
    made, _, out = imported
    net = IRSE50()
    net.load_state_dict(torch.load(out / DENSE_FACE_FOLDER / IRSE50_FILE, weights_only=True), strict=True)
    same_state(net.state_dict(), made["facenet"].state_dict())


def test_g1_of_the_imported_folder_equals_the_source_unet(imported):
    made, _, out = imported
    pipe = DenseFacePipeline.from_pretrained(str(out))
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        g1, _ = pipe.dense_face(x, t, c, mode="G1")
        ref = made["unet"](x, t, encoder_hidden_states=c).sample
    # The weights are the source's bit for bit; the outputs may differ in the last float32 bit, because
    # tensors loaded from safetensors can take another kernel path (alignment) than freshly made ones.
    mine = pipe.dense_face.unet.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in made["unet"].state_dict().items())
    torch.testing.assert_close(g1, ref, rtol=0, atol=1e-6)


def test_cli_import_and_missing_file(imported, tmp_path, capsys):
    made, _, _ = imported
    assert main(["import-official", str(made["ckpt"]), "--out", str(tmp_path / "o"), "--original-config",
                 str(made["original"]), "--clip", str(made["clip"])]) == 0
    assert (tmp_path / "o" / "dense_face" / "dense_face.json").is_file()
    capsys.readouterr()
    assert main(["import-official", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "p"),
                 "--clip", str(made["clip"])]) != 0
    missing = tmp_path / "none.ckpt"
    assert capsys.readouterr().err.splitlines() == [
        f"error: checkpoint not found: {missing} (the released Dense-Face .ckpt or a .safetensors of it)"]


def test_generate_runs_the_imported_folder_with_no_other_flag(imported, tmp_path):
    from denseface.etl.sample_data import sample_photo

    _, _, folder = imported
    out = tmp_path / "out.png"
    assert main(["generate", "--pretrained", str(folder), "--prompt", "a photo of a person",
                 "--reference", str(sample_photo("obama")), "--out", str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert (info["steps"], info["guidance"], info["id_backend"]) == (50, 4.0, "irse50")  # the release's sampler
    assert info["image_size"] == [64, 64]  # the tiny model's native size (sample size 8 x VAE scale 8)


def test_g1_image_equals_diffusers_from_single_file(imported, monkeypatch):
    """diffusers' own loader of the same file (offline: the LDM YAML written here; its text encoder and
    tokenizer given, as diffusers would fetch CLIP's config) makes the same G1 image: same seed, DDIM with the
    release's eta 1 (the imported model's default, so the noise draws must match too)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from denseface.generation.pipeline import DenseFaceGenerator

    made, _, folder = imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = DenseFaceGenerator.load(str(folder), device="cpu").text_to_image(
        "a photo of a person", steps=10, guidance=4.0, seed=3, output="float")
    pipe = StableDiffusionPipeline.from_single_file(
        str(made["ckpt"]), original_config=str(made["original"]), local_files_only=True, safety_checker=None,
        text_encoder=made["text"], tokenizer=CLIPTokenizer.from_pretrained(made["clip"]))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.unet.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe("a photo of a person", num_inference_steps=10, guidance_scale=4.0, height=64, width=64, eta=1.0,
                 generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert ours.shape == plain.shape == (64, 64, 3)
    assert np.array_equal(ours, plain)


def test_pose_branch_equals_diffusers_controlnet_from_single_file(imported, tmp_path, monkeypatch):
    """The control part saved as a ControlNet file of its own (control_model.* keys) and loaded by diffusers'
    `ControlNetModel.from_single_file` equals the imported pose branch (loaded through our pipeline) on every
    part diffusers can convert: all but the middle block's second ResNet.

    diffusers 0.42 cannot take the release's ControlNet as is: `original_config=` fails (its
    create_controlnet_diffusers_config_from_ldm calls the UNet config function without the checkpoint), so the
    config comes as a folder (`config=`: the ControlNet of the YAML's UNet, as diffusers derives it) with the
    release's attention-free blocks as keyword overrides. Its ControlNetModel's "UNetMidBlock2D" holds one
    ResNet, and convert_controlnet_checkpoint reads middle_block.1 as attention, so those keys go unused and
    its mid residual lacks that ResNet; with our mid block put in its place, every output is equal."""
    made, _, folder = imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    control = {k: v for k, v in made["state"].items() if k.startswith("control_model.")}
    path, config = tmp_path / "control.safetensors", tmp_path / "controlnet"
    save_file(control, str(path))
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(ORIGINAL, control)
    ControlNetModel.from_unet(UNet2DConditionModel(**unet_cfg), load_weights_from_unet=False,
                              conditioning_embedding_out_channels=HINT).save_config(str(config))
    theirs = ControlNetModel.from_single_file(
        str(path), config=str(config), local_files_only=True,
        down_block_types=("DownBlock2D",) * len(unet_cfg["down_block_types"]), mid_block_type="UNetMidBlock2D")
    ours = DenseFacePipeline.from_pretrained(str(folder)).dense_face.pose_branch

    mine, their_state = ours.net.state_dict(), theirs.state_dict()
    second = {k for k in mine if k.startswith("mid_block.resnets.1.")}
    assert second and set(mine) - set(their_state) == second and set(their_state) < set(mine)
    for key, value in their_state.items():
        assert torch.equal(value, mine[key]), key
    middle = "control_model.middle_block.1."
    unused = set(sfu.convert_controlnet_checkpoint(control, theirs.config)) - set(their_state)
    assert unused == {"mid_block.attentions.0." + k[len(middle):] for k in control if k.startswith(middle)}

    x, t, c, pose = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        down, mid = ours(x, t, c, pose)
        their_down, their_mid = theirs(x, t, encoder_hidden_states=c, controlnet_cond=pose, return_dict=False)
        assert len(down) == len(their_down) == len(made["pose"].controlnet_down_blocks)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(down, their_down))
        assert not torch.allclose(mid, their_mid, atol=1e-3)  # diffusers' mid block: one ResNet
        theirs.mid_block = ours.net.mid_block
        assert torch.allclose(mid, theirs(x, t, encoder_hidden_states=c, controlnet_cond=pose, return_dict=False)[1],
                              atol=1e-5)


def test_safetensors_input_imports_the_same(imported, tmp_path):
    made, report, folder = imported
    path = tmp_path / "dense_face.safetensors"
    save_file({k: v.contiguous() for k, v in made["state"].items()}, str(path))
    again = import_official(path, tmp_path / "out", made["original"], str(made["clip"]))
    assert again.consumed == report.consumed and again.dropped == report.dropped
    a, b = (load_file(str(f / DENSE_FACE_FOLDER / "dense_face.safetensors")) for f in (folder, tmp_path / "out"))
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("dense_heads."))  # heads: random, not in the file


def test_release_pose_image_geometry_scales_with_the_crop():
    from denseface.generation.face_region import FaceRegion
    from denseface.geometry.pose_image import draw_pose_axes

    crop = np.zeros((128, 128, 3), np.uint8)
    region = FaceRegion(source="box", quad=np.zeros((4, 2)), matrix=np.eye(2, 3), crop=crop,
                        mask=np.ones((128, 128), bool), yaw=20.0, pitch=-10.0, roll=5.0)
    release = region.pose_image(RELEASE_POSE_IMAGE)
    assert np.array_equal(release, draw_pose_axes(20.0, -10.0, 5.0, size=128, length=50.0, thickness=2))
    assert (release != 255).any(-1).sum() > (region.pose_image() != 255).any(-1).sum()  # longer, thicker axes


def test_offline_missing_clip_is_one_line_before_reading_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["import-official", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "openai/clip-vit-large-patch14" in err[0] and "hf download" in err[0]
