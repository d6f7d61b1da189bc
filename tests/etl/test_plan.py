import random

from denseface.etl.plan import make_plan
from denseface.etl.readers import Record
from denseface.shards.schema import is_safe_key


def _rec(identity, rel, source="casia"):
    return Record(source, identity, f"/data/{rel}", rel)


def test_plan_is_deterministic_whatever_the_listing_order():
    recs = [_rec(f"id{i % 7}", f"id{i % 7}/{i:04d}.jpg") for i in range(50)]
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    a, b = make_plan(recs, 8), make_plan(shuffled, 8)
    assert [u.fingerprint for u in a] == [u.fingerprint for u in b]
    assert [[p.key for p in u.inputs] for u in a] == [[p.key for p in u.inputs] for u in b]
    assert [len(u.inputs) for u in a] == [8] * 6 + [2]


def test_keys_are_safe_unique_and_readable():
    recs = [_rec("0000045", "0000045/001.jpg"), _rec("0000045", "0000045/001.png"),
            _rec("we.ird id", "we.ird id/../x y.jpg"), _rec("a", "a/" + "n" * 300 + ".jpg")]
    keys = [p.key for u in make_plan(recs, 10) for p in u.inputs]
    assert len(set(keys)) == len(keys)
    assert all(is_safe_key(k) for k in keys)
    assert "0000045-001-" in keys[0] and "0000045-001-" in keys[1]  # clash resolved by a path hash


def test_fingerprint_changes_with_inputs():
    recs = [_rec("a", f"a/{i}.jpg") for i in range(4)]
    fp = make_plan(recs, 4)[0].fingerprint
    assert make_plan(recs[:3] + [_rec("a", "a/9.jpg")], 4)[0].fingerprint != fp


def test_keys_stay_unique_when_a_name_mimics_a_hashed_key():
    clash = [_rec("p", "p/x.jpg", "casia"), _rec("p", "p/x.jpg", "folder")]
    hashed = [p.key for u in make_plan(clash, 10) for p in u.inputs]
    mimic = _rec("p", f"{hashed[0].replace('-', '/', 1)}.jpg", "casia")
    keys = [p.key for u in make_plan(clash + [mimic], 10) for p in u.inputs]
    assert len(set(keys)) == 3 and all(is_safe_key(k) for k in keys)
