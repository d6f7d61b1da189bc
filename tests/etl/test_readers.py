from pathlib import Path

import pytest

from denseface.etl.readers import SourceError, read_casia, read_celeba, read_folder, read_release, read_source


def _touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_casia_one_folder_per_identity(tmp_path):
    _touch(tmp_path / "0000045" / "001.jpg")
    _touch(tmp_path / "0000045" / "002.png")
    _touch(tmp_path / "0000099" / "001.jpg")
    _touch(tmp_path / "0000099" / "notes.txt")
    _touch(tmp_path / ".hidden" / "001.jpg")
    listed = list(read_casia(tmp_path))
    recs = [r for r in listed if not r.skip]
    assert [(r.identity, r.rel) for r in recs] == [
        ("0000045", "0000045/001.jpg"), ("0000045", "0000045/002.png"), ("0000099", "0000099/001.jpg")]
    assert all(Path(r.source_path).is_absolute() and not r.error for r in recs)
    assert sorted((r.rel, r.skip) for r in listed if r.skip) == [
        (".hidden", "casia: hidden entry"), ("0000099/notes.txt", "casia: not an image file name")]


def test_sample_is_a_casia_tree_of_real_photos(sample_casia):
    recs = list(read_casia(sample_casia))
    idents = {r.identity for r in recs}
    assert {"obama", "biden", "eileen_collins", "tom_hanks"} <= idents
    assert sum(r.identity == "obama" for r in recs) >= 3  # several photos of one person


def test_folder_reader_nested_identity(tmp_path):
    _touch(tmp_path / "a" / "b" / "x.jpg")
    _touch(tmp_path / "top.jpg")
    _touch(tmp_path / "a_b" / "y.jpg")
    recs = sorted((r.identity, r.rel) for r in read_folder(tmp_path))
    assert recs == [(".", "top.jpg"), ("a/b", "a/b/x.jpg"), ("a_b", "a_b/y.jpg")]  # one identity per folder


def test_celeba_with_attrs_bbox_and_bad_lines(tmp_path):
    _touch(tmp_path / "img_align_celeba" / "000001.jpg")
    _touch(tmp_path / "img_align_celeba" / "000002.jpg")
    (tmp_path / "Anno").mkdir()
    (tmp_path / "Anno" / "identity_CelebA.txt").write_text(
        "000001.jpg 2880\n000002.jpg 2937\nthis line is broken\n../etc/passwd 5\n000003.jpg 7\n")
    (tmp_path / "list_attr_celeba.txt").write_text("2\nSmiling Male\n000001.jpg 1 -1\n000002.jpg -1 1\n")
    (tmp_path / "list_bbox_celeba.txt").write_text("2\nimage_id x_1 y_1 width height\n000001.jpg 95 71 226 313\n")
    recs = list(read_celeba(tmp_path))
    good = [r for r in recs if not r.error]
    bad = [r for r in recs if r.error]
    assert [(r.identity, Path(r.source_path).name) for r in good] == [
        ("2880", "000001.jpg"), ("2937", "000002.jpg"), ("7", "000003.jpg")]
    assert good[0].attrs["attributes"] == {"Smiling": True, "Male": False}
    assert good[0].attrs["source_bbox_xywh"] == [95, 71, 226, 313]
    assert "source_bbox_xywh" not in good[1].attrs
    assert len(bad) == 2 and all(r.error.startswith("index: malformed identity line") for r in bad)
    assert ":3" in bad[0].source_path and ":4" in bad[1].source_path


def test_celeba_missing_identity_file_is_clear(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(SourceError, match="identity_CelebA.txt"):
        list(read_celeba(tmp_path))


def test_release_csv_positions_and_bad_rows(tmp_path):
    header = ",".join(f"c{i}" for i in range(16))
    row = ["images/0000045/001.jpg", "", "", "landmarks/0000045/001.csv", "masks/0000045/001.png", "", "", "",
           "", "[0.1,0.1,0.9,0.9]", "45", "", "", "", "a photo of a man", "['1.5', '-20.0', '3.0']"]
    bad_pose = list(row)
    bad_pose[-1] = "not a pose"
    unsafe = list(row)
    unsafe[0] = "../../etc/passwd"
    lines = [header, ",".join(f'"{c}"' for c in row), ",".join(f'"{c}"' for c in bad_pose),
             ",".join(f'"{c}"' for c in unsafe), "short,row"]
    (tmp_path / "casiaFacesDataset256_train_headpose.csv").write_text("\n".join(lines) + "\n")
    recs = list(read_release(tmp_path))
    assert len(recs) == 4
    good = recs[0]
    assert good.identity == "0000045" and good.source_path.endswith("images/0000045/001.jpg")
    assert (good.attrs["release_pitch"], good.attrs["release_yaw"], good.attrs["release_roll"]) == (1.5, -20.0, 3.0)
    assert good.attrs["release_caption"] == "a photo of a man"
    assert all(r.error.startswith("index: malformed index line") for r in recs[1:])


def test_read_source_errors():
    with pytest.raises(SourceError, match="unknown source kind"):
        read_source("flickr:/x")
    with pytest.raises(SourceError, match="CASIA"):
        list(read_source("casia:/definitely/not/here"))


def test_folder_deeper_than_the_python_stack(tmp_path):
    import sys

    _touch(tmp_path.joinpath(*["d"] * 300) / "x.jpg")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(150)  # a recursive walk of 300 levels would fail here
    try:
        recs = [r for r in read_folder(tmp_path) if not r.skip]
    finally:
        sys.setrecursionlimit(limit)
    assert len(recs) == 1 and recs[0].rel.endswith("/x.jpg")
