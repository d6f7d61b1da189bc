"""Training data pipeline: tensors, reference identity, heatmaps, caption dropout, corrupt samples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from denseface.errors import UserError
from denseface.shards.reader import iter_samples
from denseface.train.data import (
    BadShardError,
    CorruptSampleWarning,
    DataState,
    SampleToTensors,
    collate,
    make_loader,
    make_pipeline,
    resolve_urls,
)
from denseface.train.identity_index import IdentityIndex, fingerprint
from denseface.train.synthetic import SYNTHETIC_VAE, write_synthetic_dataset
from denseface.train.targets import render_heatmaps


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2 identities x 3 images, all members, over 2 shards (write_unit)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("train_data") / "ds", identities=2, per_identity=3, shards=2)


@pytest.fixture(scope="module")
def index(dataset, tmp_path_factory):
    return IdentityIndex.load_or_build(resolve_urls(str(dataset)), tmp_path_factory.mktemp("idx") / "index")


@pytest.fixture(scope="module")
def stored(dataset):
    return {s["__key__"]: s for s in iter_samples(dataset)}


def _batches(dataset, index, n, batch_size=4, **kw):
    tr = SampleToTensors(64, 8, sigma=1.0, caption_dropout=kw.pop("caption_dropout", 0.0), seed=0, index=index)
    it = iter(make_pipeline(resolve_urls(str(dataset)), tr, batch_size, **kw))
    return [next(it) for _ in range(n)]


def test_batch_shapes_and_dtypes(dataset, index):
    b = _batches(dataset, index, 1)[0]
    expect = {"image": ((4, 3, 64, 64), torch.float32), "landmarks": ((4, 478, 2), torch.float32),
              "heatmaps": ((4, 478, 8, 8), torch.float32), "mask": ((4, 8, 8), torch.int64),
              "depth": ((4, 1, 8, 8), torch.float32), "pose_image": ((4, 3, 64, 64), torch.float32),
              "id_emb": ((4, 128), torch.float32), "has_latent": ((4,), torch.bool)}
    for k, (shape, dtype) in expect.items():
        assert tuple(b[k].shape) == shape and b[k].dtype == dtype, k
    assert -1.0 <= b["image"].min() < b["image"].max() <= 1.0
    assert 0.0 <= b["pose_image"].min() and b["pose_image"].max() <= 1.0
    assert b["mask"].min() >= 0 and b["mask"].max() <= 9 and b["mask"].max() > 0
    assert 0.0 <= b["depth"].min() and b["depth"].max() <= 1.0 and b["depth"].max() > 0
    assert all(isinstance(c, str) and c for c in b["caption"]) and len(b["key"]) == 4
    assert not b["has_latent"].any() and "latent" not in b


def test_workers_split_shards_and_cover_every_sample(dataset, index):
    """2 DataLoader workers, one shard each: the first 'epoch' of batches holds every key once."""
    tr = SampleToTensors(64, 8, index=index)
    loader = make_loader(make_pipeline(resolve_urls(str(dataset)), tr, 3, num_workers=2), 2)
    it = iter(loader)
    first = [next(it) for _ in range(2)]
    assert [b["__worker__"] for b in first] == [0, 1]
    keys = sorted(k for b in first for k in b["key"])
    assert keys == sorted(f"id{i}_{j}" for i in range(2) for j in range(3))


def test_reference_is_another_image_of_the_same_identity(dataset, index, stored):
    seen = 0
    for b in _batches(dataset, index, 6, batch_size=2):
        for key, ref, emb in zip(b["key"], b["ref_key"], b["id_emb"]):
            assert ref != key and ref.split("_")[0] == key.split("_")[0]
            want = stored[ref]["id.npy"].astype(np.float32)
            assert torch.equal(emb, torch.from_numpy(want))
            seen += 1
    assert seen == 12


def test_single_image_identity_references_itself(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "single", identities=2, per_identity=1)
    index = IdentityIndex.build(resolve_urls(str(ds)))
    rng = np.random.default_rng(0)
    assert index.reference("id0_0", rng)[0] == "id0_0" and index.reference("nope", rng) is None


def test_identity_index_is_cached_and_memory_mapped(dataset, index):
    assert len(index) == 6 and index.dim == 128 and index.num_identities == 2
    assert isinstance(index.arrays["emb"], np.memmap)
    again = IdentityIndex.load_or_build(resolve_urls(str(dataset)), index.path)
    assert np.array_equal(np.asarray(again.arrays["emb"]), np.asarray(index.arrays["emb"]))
    assert fingerprint(["a.tar", "b.tar"]) == fingerprint(["b.tar", "a.tar"]) != fingerprint(["a.tar"])


def test_heatmap_peaks_at_the_landmark(dataset, index):
    hm = render_heatmaps(torch.tensor([[0.3, 0.7]]), 8, 1.0)[0]
    r, c = divmod(int(hm.argmax()), 8)
    assert (r, c) == (5, 2) and hm.max() == pytest.approx(np.exp(-(0.1**2 + 0.1**2) / 2), rel=1e-5)
    b = _batches(dataset, index, 1)[0]
    xy, hm = b["landmarks"], b["heatmaps"]
    peak = hm.flatten(2).argmax(-1)
    want = (xy[..., 1] * 8 - 0.5).round().clamp(0, 7) * 8 + (xy[..., 0] * 8 - 0.5).round().clamp(0, 7)
    inside = ((xy > 0.07) & (xy < 0.93)).all(-1)
    flat = hm.flatten(2)
    at_want = flat.gather(-1, want.long().unsqueeze(-1)).squeeze(-1)
    assert inside.sum() > 1000 and (peak[inside] == want[inside].long()).float().mean() > 0.99
    assert torch.allclose(at_want[inside], flat.amax(-1)[inside], atol=1e-5)  # the rest are ties


def test_caption_dropout_rate():
    meta = {"captions": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}
    tr = SampleToTensors(64, 8, caption_dropout=0.3)
    got = [tr.caption(meta, np.random.default_rng(i)) for i in range(3000)]
    assert abs(got.count("") / len(got) - 0.3) < 0.035
    kept = [g for g in got if g]
    assert {g: kept.count(g) / len(kept) > 0.28 for g in "abc"} == dict.fromkeys("abc", True)
    assert tr.caption({"captions": []}, np.random.default_rng(0)) == ""


def test_caption_dropout_in_the_pipeline_is_seeded_by_key(dataset, index):
    a = _batches(dataset, index, 3, batch_size=2, caption_dropout=0.5)
    b = _batches(dataset, index, 3, batch_size=2, caption_dropout=0.5)
    assert [x["caption"] for x in a] == [x["caption"] for x in b]


def test_corrupt_sample_is_skipped_with_a_warning(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "bad", identities=2, per_identity=3, corrupt=("id1_1",))
    tr = SampleToTensors(64, 8, index=IdentityIndex.build(resolve_urls(str(ds))))
    with pytest.warns(CorruptSampleWarning, match="id1_1"):
        keys = [k for b in make_pipeline(resolve_urls(str(ds)), tr, 2, shuffle=False, loop=False) for k in b["key"]]
    assert keys == ["id0_0", "id0_1", "id0_2", "id1_0", "id1_2"]


def test_collate_mixes_cached_latents_and_images():
    a = {"key": "a", "latent": torch.ones(4, 8, 8), "x": torch.zeros(2), "__pos__": (0, 0, 1), "__worker__": 0}
    b = {"key": "b", "image": torch.ones(3, 64, 64), "x": torch.ones(2), "__pos__": (0, 0, 2), "__worker__": 0}
    out = collate([a, b])
    assert out["has_latent"].tolist() == [True, False] and out["latent"][1].abs().sum() == 0
    assert out["image"][0].abs().sum() == 0 and out["__pos__"] == (0, 0, 2) and out["key"] == ["a", "b"]
    state = DataState(num_workers=2)
    state.update(out)
    assert state.positions == {0: (0, 0, 2)} and state.next_worker == 1
    assert DataState.from_dict(state.to_dict()) == state


def test_resolve_urls(dataset):
    folder = resolve_urls(str(dataset))
    assert [u.rsplit("/", 1)[1] for u in folder] == ["shard-000000.tar", "shard-000001.tar"]
    assert resolve_urls(f"{dataset}/shard-{{000000..000001}}.tar") == folder
    assert resolve_urls([f"{dataset}/shard-*.tar"]) == folder
    assert resolve_urls("pipe:cat x.tar") == ["pipe:cat x.tar"]
    with pytest.raises(UserError, match="no shard"):
        resolve_urls(str(dataset / "manifest"))
    with pytest.raises(UserError, match="not found"):
        resolve_urls(str(dataset / "shard-000009.tar"))


def test_truncated_shard_is_named_then_stops_or_is_skipped(dataset, tmp_path):
    import shutil

    for tar in dataset.glob("shard-*.tar"):
        shutil.copy(tar, tmp_path / tar.name)
    broken = tmp_path / "shard-000001.tar"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with pytest.raises(BadShardError, match=f"shard {broken} is unreadable .*ReadError.*--skip-bad-shards"):
        resolve_urls(str(tmp_path))
    with pytest.warns(CorruptSampleWarning, match="skipped 1 of 2 shard"):
        assert resolve_urls(str(tmp_path), bad_shards="skip") == [str(tmp_path / "shard-000000.tar")]


def test_cached_latents_replace_the_image(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "lat", identities=1, per_identity=2, latent_size=8)
    urls = resolve_urls(str(ds))
    b = next(iter(make_pipeline(urls, SampleToTensors(64, 8, latent_vae=SYNTHETIC_VAE), 2, loop=False)))
    assert tuple(b["latent"].shape) == (2, 4, 8, 8) and "image" not in b and b["has_latent"].all()
    # not wanted, made by another VAE, or at another resolution: the image goes through the VAE
    for tr in (SampleToTensors(64, 8), SampleToTensors(64, 8, latent_vae="another-vae"),
               SampleToTensors(512, 64, latent_vae=SYNTHETIC_VAE)):
        b = next(iter(make_pipeline(urls, tr, 2, loop=False)))
        assert "latent" not in b and tuple(b["image"].shape) == (2, 3, tr.resolution, tr.resolution)
        assert not b["has_latent"].any()
