"""shards/reader.py: the one tar member iterator (local tars and webdataset streams) and the local-path check."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from denseface.shards.reader import iter_members, local_path
from denseface.shards.writer import write_tar

SAMPLES = [("b_1", {"json": b'{"identity": "b"}', "jpg": b"\xff\xd8 jpeg"}),
           ("a_0", {"json": b'{"identity": "a"}', "id.npy": b"npy", "jpg": b"\xff\xd8 other"})]


@pytest.fixture()
def shard(tmp_path) -> Path:
    path = tmp_path / "shard-000000.tar"
    with open(path, "wb") as fh:
        write_tar(fh, SAMPLES)
    return path


def _expected(read=lambda key, ext: True):
    return [(key, ext, members[ext] if read(key, ext) else None)
            for key, members in sorted(SAMPLES) for ext in sorted(members)]


def test_local_path_tells_local_files_from_remote_urls():
    assert local_path("/d/shard-000001.tar") == Path("/d/shard-000001.tar")
    assert local_path("rel/shard-000001.tar") == Path("rel/shard-000001.tar")
    assert local_path("file:/d/shard-000001.tar") == Path("/d/shard-000001.tar")
    for remote in ("pipe:cat /d/shard-000001.tar", "s3://b/shard-000001.tar", "http://h/shard-000001.tar"):
        assert local_path(remote) is None, remote


def test_iter_members_of_a_local_tar(shard):
    assert list(iter_members(shard)) == _expected()
    assert list(iter_members(str(shard))) == _expected()
    only_json = lambda key, ext: ext == "json"  # noqa: E731
    assert list(iter_members(shard, read=only_json)) == _expected(only_json)


def test_iter_members_through_a_pipe_url_equals_the_local_read(shard):
    url = f"pipe:cat {shard}"
    assert local_path(url) is None
    assert list(iter_members(url)) == _expected()
    only_a = lambda key, ext: key == "a_0"  # noqa: E731
    assert list(iter_members(url, read=only_a)) == _expected(only_a)


def test_stopping_a_pipe_stream_early_is_quiet(tmp_path, recwarn):
    """A command killed by SIGPIPE when the reader stops (here it then exits 3) is not an error of the read."""
    big = tmp_path / "shard-000001.tar"
    with open(big, "wb") as fh:
        write_tar(fh, [(f"k{i:03d}", {"jpg": bytes(256 * 1024)}) for i in range(40)])  # 10 MB > a pipe's buffer
    members = iter_members(f"pipe:cat {big} || exit 3")
    assert next(members)[0] == "k000"
    members.close()
    assert not recwarn.list
    assert len(list(iter_members(f"pipe:cat {big} || exit 3"))) == 40  # read to the end: cat exits 0


def test_a_failing_command_or_a_broken_tar_raises(shard, tmp_path):
    with pytest.raises(OSError, match="exit 3"):
        list(iter_members(f"pipe:cat {shard}; exit 3"))  # the whole tar came, then the command failed
    with pytest.raises((tarfile.TarError, OSError)):
        list(iter_members(f"pipe:cat {tmp_path / 'missing.tar'}"))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[:700])  # inside the first member's data
    with pytest.raises((tarfile.TarError, OSError)):
        list(iter_members(cut))


@pytest.mark.parametrize("name", ["dir/k.jpg", "nodot", "bad key.jpg"])
def test_a_member_the_writer_would_not_name_raises(tmp_path, name):
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="unexpected tar member"):
        list(iter_members(path))
