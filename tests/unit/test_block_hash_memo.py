"""Remembered block hashes give the same hashes as SHA-256 every time, stay bounded, and keep
what is in use when a generation turns over."""

import random

from kv_transfer.block_hash import BlockHasher
from kv_transfer.block_hash_memo import BlockHashMemo


def test_memo_gives_the_same_hashes_as_the_chain():
    hasher = BlockHasher(block_size=4)
    memo = BlockHashMemo(capacity=8)
    rng = random.Random(0)
    system = [rng.randrange(50_000) for _ in range(40)]
    for n in range(50):
        tail = [rng.randrange(50_000) for _ in range(rng.randrange(0, 13))]
        salt = ("tenant-a",) if n % 3 == 0 else ()
        prompt = system + tail
        assert hasher.hash_prompt(prompt, salt, memo=memo) == hasher.hash_prompt(prompt, salt)
    assert memo.hits > 0 and len(memo) <= 2 * memo.capacity


def test_salt_and_parent_name_different_blocks():
    hasher = BlockHasher(block_size=2)
    memo = BlockHashMemo()
    a = hasher.hash_prompt([1, 2, 3, 4], memo=memo)
    salted = hasher.hash_prompt([1, 2, 3, 4], ("s",), memo=memo)
    shifted = hasher.hash_prompt([9, 9, 3, 4], memo=memo)  # block [3, 4] under another parent
    assert a != salted and a[1] != shifted[1]
    assert salted == hasher.hash_prompt([1, 2, 3, 4], ("s",))
    assert shifted == hasher.hash_prompt([9, 9, 3, 4])


def test_entries_in_use_survive_a_turnover():
    memo = BlockHashMemo(capacity=2)
    memo.put(("hot",), 1)
    memo.put(("cold",), 2)
    memo.put(("new",), 3)  # the young generation was full: it became the old one
    assert memo.get(("hot",)) == 1  # found in the old one, moved back to the young one
    memo.put(("newer",), 4)  # turns over again: "cold" goes, "hot" stays
    assert memo.get(("cold",)) is None
    assert memo.get(("hot",)) == 1
