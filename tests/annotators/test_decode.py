import numpy as np
import pytest
from PIL import Image

from denseface.annotators.base import Reject
from denseface.annotators.decode import decode_image
from tests.conftest import BAD_EXPECTED

LIMITS = dict(max_bytes=100 * 2**20, max_pixels=60_000_000, min_side=32)


@pytest.mark.parametrize("name", sorted(n for n, (s, _) in BAD_EXPECTED.items() if s == "rejected"
                                        and n not in ("noise.png", "two_faces.jpg")))
def test_bad_files_are_rejected_with_reason(bad_corpus, name):
    with pytest.raises(Reject) as exc:
        decode_image(str(bad_corpus / "bad" / name), **LIMITS)
    assert BAD_EXPECTED[name][1] in str(exc.value)


@pytest.mark.parametrize("name,mode", [("sixteen_bit.png", "I"), ("cmyk.jpg", "CMYK"), ("grayscale.jpg", "L")])
def test_odd_modes_become_rgb(bad_corpus, name, mode):
    rgb, fields = decode_image(str(bad_corpus / "bad" / name), **LIMITS)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert fields["src_mode"].startswith(mode)
    assert rgb.std() > 10  # real content survived the conversion, not a flat image


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    rgb, _ = decode_image(str(tmp_path / "ramp.png"), **LIMITS)
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert len(np.unique(rgb[..., 0])) > 200


def test_missing_and_oversized(tmp_path):
    with pytest.raises(Reject, match="missing file"):
        decode_image(str(tmp_path / "nope.jpg"), **LIMITS)
    (tmp_path / "big.jpg").write_bytes(b"\xff" * 2048)
    with pytest.raises(Reject, match="file too large"):
        decode_image(str(tmp_path / "big.jpg"), max_bytes=1024, max_pixels=10**8, min_side=1)


def test_alpha_is_composited_on_white(tmp_path):
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    rgb, _ = decode_image(str(tmp_path / "clear.png"), **LIMITS)
    assert (rgb == 255).all()
