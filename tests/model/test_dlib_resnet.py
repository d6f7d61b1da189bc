"""dlib's face ResNet in torch (model/dlib_resnet.py): the parser of dlib's serialisation, the
zero-padded residual sum, and descriptors equal to dlib's own on the real sample faces."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from denseface.annotators.identity import DLIB_RECOGNITION, dlib_weights_dir
from denseface.model import dlib_resnet as dr
from tests.annotators.test_identity import faces, fresh, identity_stage  # noqa: F401 - the shared face fixture

WEIGHTS = dlib_weights_dir(None) / DLIB_RECOGNITION


def test_reader_decodes_dlib_integers_and_floats():
    # 300 = 0x012c in 2 bytes; -5 = sign bit + 1 byte; 0 = one zero byte; 1.5 = 3 * 2^-1
    r = dr._Reader(bytes([0x02, 0x2C, 0x01, 0x81, 0x05, 0x01, 0x00, 0x01, 0x03, 0x81, 0x01]), 0)
    assert (r.int(), r.int(), r.int(), r.float()) == (300, -5, 0, 1.5)
    with pytest.raises(ValueError, match="bad integer header"):
        dr._Reader(bytes([0x0F]), 0).int()


def test_parser_reads_the_published_network():
    w = dr.read_dlib_resnet(WEIGHTS)
    assert len(w.convs) == 29 and len(w.affines) == 29 and w.fc.shape == (256, 128)
    np.testing.assert_allclose(w.mean_rgb, (122.782, 117.001, 104.298), atol=1e-3)
    assert [c.stride for c in w.convs].count(2) == 5  # the stem and four downsampling blocks
    assert w.convs[0].weight.shape == (32, 3, 7, 7) and w.convs[-1].weight.shape == (256, 256, 3, 3)
    net = dr.DlibFaceResNet.from_weights(w)
    assert sum(p.numel() for p in net.parameters()) == sum(
        c.weight.size + c.bias.size for c in w.convs) + sum(a.size + b.size for a, b in w.affines) + w.fc.size


def test_parser_refuses_other_files(tmp_path):
    other = tmp_path / "model.dat"
    other.write_bytes(b"\x01\x05con_4" + bytes(64))  # no input layer first
    with pytest.raises(ValueError, match="no input layer"):
        dr.read_dlib_resnet(other)
    other.write_bytes(b"not a dlib file at all")
    with pytest.raises(ValueError, match="not dlib's face recognition ResNet"):
        dr.read_dlib_resnet(other)


def test_add_prev_sums_over_the_larger_extent_with_zeros():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 2.0)
    out = dr._add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert (out[:, :2, :3, :3] == 3).all() and (out[:, 2:] == 2).all() and (out[:, :, 3] == 2).all()


def test_torch_engine_equals_dlib_on_the_sample_faces(faces):  # noqa: F811
    keys = list(faces)
    ours = identity_stage("dlib", engine="torch").process(fresh(faces, *keys))
    theirs = identity_stage("dlib", engine="dlib").process(fresh(faces, *keys))
    for a, b in zip(ours, theirs):
        assert a.ok and b.ok
        cos = float(a.arrays["id"] @ b.arrays["id"])
        assert cos >= 0.999999, (a.key, cos)  # the bar is 0.999; float32 rounding is all that differs
    # and the descriptors differ between faces (a constant output would pass the line above)
    assert float(ours[0].arrays["id"] @ ours[3].arrays["id"]) < 0.95


def test_engine_option_is_checked():
    with pytest.raises(ValueError, match="engine must be one of"):
        identity_stage("dlib", engine="onnx").check()
    with pytest.raises(ValueError, match="needs engine: dlib"):
        identity_stage("dlib", num_jitters=2).check()
    identity_stage("dlib", engine="dlib", num_jitters=2).check()


def test_torch_descriptors_do_not_depend_on_how_images_are_batched(faces):  # noqa: F811
    """A runner cuts batches as its units fall (a unit whose size is no multiple of the batch
    ends in a short one, down to a single image); the stored descriptors must be the same bits
    however they were cut."""
    keys = sorted(faces)
    whole = [it.arrays["id"] for it in identity_stage("dlib", engine="torch").process(fresh(faces, *keys))]
    for size in (1, 2, 3):
        stage = identity_stage("dlib", engine="torch")
        cut = [it.arrays["id"] for start in range(0, len(keys), size)
               for it in stage.process(fresh(faces, *keys[start:start + size]))]
        assert all(np.array_equal(a, b) for a, b in zip(whole, cut, strict=True)), size
