"""decode_npy from many threads at once (issue 10).

CPython 3.11's ast is not thread-safe, and np.load parses .npy headers with ast: a thread
switch in the middle of a parse raises "SystemError: AST constructor recursion depth
mismatch". The switches are forced the way a busy process makes them: a tiny switch
interval, and the garbage collector running finalizers of cyclic garbage in the middle of
every decode. Against np.load this harness fails within seconds (see the issue note).
"""
from __future__ import annotations

import gc
import io
import sys
import threading
import time

import numpy as np
import pytest

from denseface.shards.schema import ID, LMK, NUM_LANDMARKS, _parse_npy_header, decode_npy, encode_members

THREADS = 12
DECODES_PER_THREAD = 3000


class _Cycle:
    """Cyclic garbage with a finalizer: collecting it runs Python code in the decoding thread."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        sum(range(3))


def _members() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arrays = {"lmk": rng.random((NUM_LANDMARKS, 3)), "id": rng.standard_normal(128)}
    return encode_members(np.zeros((8, 8, 3), np.uint8), {}, arrays)


def _hammer(decode, members: dict[str, bytes], seconds: float) -> list[BaseException]:
    """Decode lmk.npy and id.npy from THREADS threads; the exceptions they raised."""
    errors: list[BaseException] = []
    expected = {m: np.load(io.BytesIO(members[m])) for m in (LMK, ID)}
    deadline = time.monotonic() + seconds
    start = threading.Barrier(THREADS)

    def work() -> None:
        start.wait()
        try:
            for i in range(DECODES_PER_THREAD):
                for m in (LMK, ID):
                    _Cycle()
                    arr = decode(members[m])
                    if not np.array_equal(arr, expected[m]):
                        raise AssertionError(f"{m} decoded wrongly")
                if i % 64 == 0 and time.monotonic() > deadline:
                    return
        except BaseException as e:  # noqa: BLE001 - every failure is the finding
            errors.append(e)

    old_interval, old_threshold = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)
    gc.set_threshold(3, 1, 1)
    try:
        threads = [threading.Thread(target=work) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
        gc.set_threshold(*old_threshold)
    return errors


def test_decode_npy_from_many_threads_never_fails():
    errors = _hammer(decode_npy, _members(), seconds=8.0)
    assert not errors, f"{len(errors)} of {THREADS} threads failed, first: {errors[0]!r}"


def test_members_the_schema_writes_take_the_ast_free_path():
    """The lock-free parser must cover what the writer produces, or the fallback does the work."""
    for name, data in _members().items():
        if name.endswith(".npy"):
            dtype, shape, _ = _parse_npy_header(data)
            assert dtype == np.float16 and shape == np.load(io.BytesIO(data)).shape


@pytest.mark.parametrize("arr", [np.arange(6, dtype=np.int32).reshape(2, 3), np.float32(2.5),
                                 np.zeros((0, 3), np.float16), np.ones((3, 2), ">f4"),
                                 np.array([b"key-1", b"k2"]), np.array(["anna", "\u00e9"])])
def test_decode_npy_equals_np_load(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    assert _parse_npy_header(buf.getvalue()) is not None  # the ast-free path, not the locked fallback
    got = decode_npy(buf.getvalue())
    assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr)
    assert got.flags.writeable


def test_other_headers_fall_back_to_numpy():
    buf = io.BytesIO()
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    np.save(buf, fortran, allow_pickle=False)
    assert _parse_npy_header(buf.getvalue()) is None
    assert np.array_equal(decode_npy(buf.getvalue()), fortran)


def test_truncated_member_is_an_error():
    data = _members()[LMK]
    with pytest.raises(ValueError, match="data bytes"):
        decode_npy(data[:-10])
