"""Restoration stage and the CodeFormer port (no published weights here: random ones)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from denseface.annotators.base import Item
from denseface.annotators.restore import Restore, from_network, parse_options, to_network
from denseface.config import BuildConfig, StageConfig
from denseface.model.codeformer import CodeFormer, image_to_tensor, load_codeformer, tensor_to_image
from tests.bench.annotation_models import write_codeformer

# A CodeFormer small enough for CPU tests at the real 512 px input (16 x 16 = 256 tokens).
SMALL = dict(nf=4, ch_mult=(1, 1, 2, 2, 4, 4), norm_groups=4, emb_dim=16, dim_embd=32, n_head=4, n_layers=1,
             codebook_size=16)


@pytest.fixture(scope="module")
def face512() -> np.ndarray:
    """A real FFHQ-aligned 512 crop made by the pipeline's own decode + detect/align stages."""
    from denseface.annotators.decode import Decode
    from denseface.annotators.detect_align import DetectAlign
    from denseface.etl.sample_data import sample_photo

    build = BuildConfig()
    item = Item(key="obama", identity="obama", source="test", source_path=str(sample_photo("obama")), unit=0)
    for stage in (Decode(build), DetectAlign(build)):
        stage.process([item])
    assert item.ok, item.reason
    assert item.image.shape == (512, 512, 3) and item.image.dtype == np.uint8
    return item.image


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("codeformer") / "codeformer.pth"
    return write_codeformer(path, **SMALL), path


def _item(image: np.ndarray) -> Item:
    return Item(key="k", identity="i", source="test", source_path="x.jpg", unit=0, image=image.copy())


def test_default_architecture_matches_published_keys():
    with torch.device("meta"):  # the 94M-parameter model, built without allocating or running it
        net = CodeFormer()
    sd = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    official = {
        "encoder.blocks.0.weight": (64, 3, 3, 3),
        "encoder.blocks.1.norm1.weight": (64,),
        "encoder.blocks.4.conv_out.weight": (128, 64, 1, 1),
        "encoder.blocks.17.q.weight": (512, 512, 1, 1),
        "encoder.blocks.24.weight": (256, 512, 3, 3),
        "quantize.embedding.weight": (1024, 256),
        "generator.blocks.0.weight": (512, 256, 3, 3),
        "generator.blocks.2.proj_out.weight": (512, 512, 1, 1),
        "generator.blocks.8.conv.weight": (512, 512, 3, 3),
        "generator.blocks.24.weight": (3, 64, 3, 3),
        "position_emb": (256, 512),
        "feat_emb.weight": (512, 256),
        "ft_layers.0.self_attn.in_proj_weight": (1536, 512),
        "ft_layers.8.self_attn.out_proj.weight": (512, 512),
        "ft_layers.8.linear1.weight": (1024, 512),
        "ft_layers.8.norm2.bias": (512,),
        "idx_pred_layer.0.weight": (512,),
        "idx_pred_layer.1.weight": (1024, 512),
        "fuse_convs_dict.32.scale.0.weight": (256, 256, 3, 3),
        "fuse_convs_dict.32.encode_enc.conv_out.weight": (256, 512, 1, 1),
        "fuse_convs_dict.256.shift.2.bias": (128,),
    }
    for key, shape in official.items():
        assert sd.get(key) == shape, key
    assert "ft_layers.9.linear1.weight" not in sd and "idx_pred_layer.1.bias" not in sd
    assert len(sd) == 515
    assert sum(int(np.prod(s)) for s in sd.values()) == 94_112_707
    # the tables the official code hardcodes, derived here from the block layout
    assert net.channels == {"16": 512, "32": 256, "64": 256, "128": 128, "256": 128, "512": 64}
    assert net.fuse_encoder_block == {"512": 2, "256": 5, "128": 8, "64": 11, "32": 14, "16": 18}
    assert net.fuse_generator_block == {"16": 6, "32": 9, "64": 12, "128": 15, "256": 18, "512": 21}
    assert net.connect_list == ["32", "64", "128", "256"]


def test_image_tensor_conversion_round_trips():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    t = image_to_tensor(img)
    assert t.shape == (2, 3, 8, 8) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert torch.allclose(t[0, :, 0, 0], torch.tensor((img[0, 0, 0] / 255.0 - 0.5) / 0.5, dtype=torch.float32))
    np.testing.assert_array_equal(tensor_to_image(t), img)
    np.testing.assert_array_equal(tensor_to_image(t[1]), img[1])
    assert tensor_to_image(torch.full((1, 3, 2, 2), 5.0)).max() == 255  # clamped
    # stage helpers resize a non-512 crop to the network size and back
    small = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    x = to_network([small])
    assert x.shape == (1, 3, 512, 512)
    assert from_network(x, [small.shape])[0].shape == (256, 256, 3)
    with pytest.raises(ValueError):
        image_to_tensor(np.zeros((8, 8, 3), np.float32))


def test_codeformer_restores_a_real_face(face512, small_ckpt):
    net, path = small_ckpt
    loaded = load_codeformer(path, **SMALL)
    assert not loaded.training
    x = image_to_tensor(face512)
    with torch.inference_mode():
        ref = net(x, w=0.7)
        out = loaded(x, w=0.7)
    assert out.shape == (1, 3, 512, 512) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, ref)  # saved and loaded weights give the same restoration
    expected = tensor_to_image(ref)[0].astype(int)

    stage = Restore(BuildConfig(), StageConfig(backend="codeformer", weights=str(path), batch_size=2,
                                               options={"fidelity": 0.7}), **SMALL)
    stage.check()
    items = [_item(face512), _item(face512)]
    stage.process(items)  # one batch of two
    for item in items:
        assert item.ok, item.reason
        assert item.image.shape == (512, 512, 3) and item.image.dtype == np.uint8
        # batched convolutions may round differently: at most one grey level apart
        assert np.abs(item.image.astype(int) - expected).max() <= 1
        assert item.fields == {"restore_backend": "codeformer", "restore_fidelity": 0.7}
        assert item.versions["restore"] == "codeformer@1"
    assert not np.array_equal(items[0].image, face512)


def test_fidelity_weight_and_small_sizes():
    """Other image sizes and fusion levels build and run; w = 0 skips the fusion blocks."""
    torch.manual_seed(1)
    net = CodeFormer(**{**SMALL, "img_size": 64, "latent_size": None, "connect_list": ("16", "32")}).eval()
    assert net.position_emb.shape == (4, 32)  # 64 / 2**5 = 2 -> 2 x 2 tokens
    assert set(net.fuse_convs_dict) == {"16", "32"}
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        base = net(x, w=0.0)
        for block in net.fuse_convs_dict.values():
            for p in block.parameters():
                p.add_(1.0)
        assert torch.equal(net(x, w=0.0), base)
        assert not torch.equal(net(x, w=1.0), base)
        with pytest.raises(ValueError, match="expects"):
            net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="latent_size"):
        CodeFormer(**{**SMALL, "img_size": 64})


@pytest.mark.parametrize("wrap", ["params", "bare"])
def test_load_codeformer_accepts_params_or_bare_dict(small_ckpt, tmp_path, wrap):
    net, _ = small_ckpt
    sd = net.state_dict()
    path = tmp_path / "cf.pth"
    torch.save({"params": sd} if wrap == "params" else sd, path)
    loaded = load_codeformer(path, **SMALL)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


def test_none_backend_leaves_image_unchanged(face512):
    for backend in ("default", "none"):
        stage = Restore(BuildConfig(), StageConfig(backend=backend))
        assert stage.backend == "none"
        stage.check()
        item = _item(face512)
        before = item.image.tobytes()
        stage.process([item])
        assert item.ok and item.image.tobytes() == before
        assert item.fields["restore_backend"] == "none" and item.fields["restore_fidelity"] is None
        assert item.versions["restore"] == "none@1"
    # the build config route: no restore section means the none backend
    assert Restore(BuildConfig()).backend == "none"


def test_missing_weights_fail_at_check(tmp_path):
    missing = tmp_path / "nowhere" / "codeformer.pth"
    stage = Restore(BuildConfig(stages={"restore": StageConfig(backend="codeformer", weights=str(missing))}))
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        stage.check()
    assert "v0.1.0" in str(err.value) and "codeformer.pth" in str(err.value)
    with pytest.raises(FileNotFoundError, match="weights path"):
        Restore(BuildConfig(), StageConfig(backend="codeformer")).check()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_codeformer(missing)


def test_bad_state_dict_fails_loudly(small_ckpt, tmp_path, face512):
    net, _ = small_ckpt
    sd = net.state_dict()
    wrong_keys = {("renamed." + k if k.startswith("feat_emb") else k): v for k, v in sd.items()}
    bad = tmp_path / "wrong_keys.pth"
    torch.save({"params_ema": wrong_keys}, bad)
    with pytest.raises(ValueError, match="wrong_keys.pth") as err:
        load_codeformer(bad, **SMALL)
    assert "feat_emb" in str(err.value)
    # the stage does not swallow it as a per-item error: setup fails the whole run
    stage = Restore(BuildConfig(), StageConfig(backend="codeformer", weights=str(bad)), **SMALL)
    stage.check()  # the file exists; its content is checked when the model loads
    with pytest.raises(ValueError, match="not a CodeFormer state dict"):
        stage.process([_item(face512)])
    # right keys, wrong architecture (shapes): also an error
    wrong_arch = tmp_path / "small.pth"
    torch.save({"params_ema": sd}, wrong_arch)
    with pytest.raises(ValueError, match="size mismatch"):
        load_codeformer(wrong_arch, **{**SMALL, "codebook_size": 32})
    garbage = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), garbage)
    with pytest.raises(ValueError, match="not a CodeFormer checkpoint"):
        load_codeformer(garbage)


def test_config_errors():
    assert Restore.resolve_backend(StageConfig(backend="default").backend) == "none"
    with pytest.raises(ValueError, match="unknown backend"):
        Restore(BuildConfig(), StageConfig(backend="gfpgan"))
    with pytest.raises(ValueError, match="fidelity"):
        parse_options({"fidelity": 1.5})
    with pytest.raises(ValueError, match="unknown options"):
        Restore(BuildConfig(), StageConfig(backend="codeformer", weights="x", options={"w": 0.5}))
    with pytest.raises(ValueError, match="no options"):
        Restore(BuildConfig(), StageConfig(backend="none", options={"fidelity": 0.5}))
    assert parse_options({}) == {"fidelity": 0.5, "adain": True, "fp16": False}
    assert parse_options({"fidelity": 1})["fidelity"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_codeformer_on_gpu_matches_cpu(face512, small_ckpt):
    _, path = small_ckpt
    conf = dict(backend="codeformer", weights=str(path), num_gpus=1, batch_size=2)
    cpu = Restore(BuildConfig(), StageConfig(**{**conf, "num_gpus": 0}), **SMALL)
    gpu = Restore(BuildConfig(), StageConfig(**conf), **SMALL)
    half = Restore(BuildConfig(), StageConfig(**conf, options={"fp16": True}), **SMALL)
    assert gpu.device() == "cuda"
    results = {}
    for name, stage in (("cpu", cpu), ("gpu", gpu), ("half", half)):
        items = [_item(face512) for _ in range(3)]
        stage.process(items)
        assert all(it.ok for it in items), [it.reason for it in items]
        results[name] = items[0].image.astype(int)
    assert np.abs(results["gpu"] - results["cpu"]).mean() < 1.0
    assert np.abs(results["half"] - results["cpu"]).mean() < 4.0
