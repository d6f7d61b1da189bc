"""Identity sidecars (shards/id_sidecar.py) and the identity index built from them."""
from __future__ import annotations

import numpy as np
import pytest

from denseface.shards.id_sidecar import decode_sidecar, encode_sidecar, sidecar_url
from denseface.shards.reader import shard_paths
from denseface.shards.schema import ID, decode_npy
from denseface.train.identity_index import IdentityIndex
from denseface.train.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("sidecar") / "ds", identities=3, per_identity=3, shards=2)


def test_sidecar_url_follows_the_shard_url():
    assert sidecar_url("/d/shard-000001.tar") == "/d/shard-000001.ids.npz"
    assert sidecar_url("pipe:aws s3 cp s3://b/x.tarballs/shard-000001.tar -") == \
        "pipe:aws s3 cp s3://b/x.tarballs/shard-000001.ids.npz -"
    with pytest.raises(ValueError, match="not a .tar"):
        sidecar_url("/d/shard-000001.zip")


def test_writer_puts_a_sidecar_beside_each_shard(dataset):
    import webdataset as wds

    for tar in shard_paths(dataset):
        side = decode_sidecar(tar.with_name(tar.name.replace(".tar", ".ids.npz")).read_bytes())
        samples = list(wds.WebDataset(str(tar), shardshuffle=False, empty_check=False))
        assert [k.decode() for k in side["keys"]] == sorted(s["__key__"] for s in samples)
        for s, key, ident, emb in zip(sorted(samples, key=lambda s: s["__key__"]), *side.values()):
            assert key.decode() == s["__key__"] and ident.decode() == s["__key__"].split("_")[0].replace("id", "person")
            np.testing.assert_array_equal(emb, decode_npy(s[ID]).astype(np.float16).ravel())


def test_sidecar_bytes_are_reproducible_and_checked():
    members = {"json": b'{"identity": "a"}', ID: _npy(np.ones(4, np.float16))}
    one = encode_sidecar([("k1", members), ("k0", members)])
    assert one == encode_sidecar([("k0", members), ("k1", members)])
    assert list(decode_sidecar(one)["keys"]) == [b"k0", b"k1"]
    assert encode_sidecar([("k0", {"json": b"{}"})]) is None  # nothing with an embedding
    with pytest.raises(ValueError, match="not an identity sidecar"):
        decode_sidecar(b"PK not a zip")


def _npy(arr):
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_index_from_sidecars_equals_the_index_from_tars(dataset, tmp_path):
    from_sidecars = IdentityIndex.build([str(p) for p in shard_paths(dataset)])
    bare = tmp_path / "bare"
    bare.mkdir()
    for tar in shard_paths(dataset):
        (bare / tar.name).write_bytes(tar.read_bytes())  # the tars only: read member by member
    from_tars = IdentityIndex.build([str(p) for p in shard_paths(bare)])
    assert len(from_tars) == 9 and from_tars.num_identities == 3
    for name in ("keys", "group", "order", "starts", "emb"):
        np.testing.assert_array_equal(from_sidecars.arrays[name], from_tars.arrays[name])


def test_remote_shards_are_not_streamed_when_sidecars_exist(dataset, tmp_path):
    """pipe: URLs whose tars are gone: the index still builds, so only the sidecars were read."""
    remote = tmp_path / "remote"
    remote.mkdir()
    for tar in shard_paths(dataset):
        side = tar.with_name(tar.name.replace(".tar", ".ids.npz"))
        (remote / side.name).write_bytes(side.read_bytes())
    urls = [f"pipe:cat {remote / p.name}" for p in shard_paths(dataset)]
    index = IdentityIndex.build(urls)
    assert len(index) == 9 and index.dim == 128
