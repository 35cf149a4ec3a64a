import subprocess
import sys

import pytest

from kv_transfer.block_hash import BlockHasher


def test_chained_hash_depends_on_whole_prefix():
    h = BlockHasher(block_size=4)
    a = h.hash_prompt([1, 2, 3, 4, 5, 6, 7, 8])
    b = h.hash_prompt([9, 2, 3, 4, 5, 6, 7, 8])
    assert len(a) == 2
    assert a[1] != b[1], "second block must differ when the first differs"
    assert h.hash_prompt([1, 2, 3, 4, 5, 6, 7, 8, 9]) == a, "partial tail block has no hash"


def test_seed_and_extra_keys_separate_caches():
    tokens = list(range(16))
    base = BlockHasher(16, seed="s1").hash_prompt(tokens)
    assert BlockHasher(16, seed="s2").hash_prompt(tokens) != base
    assert BlockHasher(16, seed="s1").hash_prompt(tokens, extra_keys=("tenant-a",)) != base
    assert BlockHasher(16, seed="s1").hash_prompt(tokens) == base


def test_incremental_equals_whole():
    h = BlockHasher(block_size=4)
    tokens = list(range(100, 120))
    whole = h.hash_prompt(tokens)
    first = list(h.iter_hashes(tokens[:8]))
    rest = list(h.iter_hashes(tokens, parent=first[-1], start_block=2))
    assert first + rest == whole


def test_only_full_blocks():
    with pytest.raises(ValueError, match="full blocks"):
        BlockHasher(block_size=4).hash_block(None, [1, 2, 3])


def test_stable_across_processes():
    """Python's hash() is salted per process; ours must not be."""
    code = ("from kv_transfer.block_hash import BlockHasher;"
            "print(BlockHasher(16, 'x').hash_prompt(list(range(48)), ('salt',)))")
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(seed), "PATH": ""}, cwd=".").stdout
        for seed in (1, 2)
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str(BlockHasher(16, "x").hash_prompt(list(range(48)), ("salt",)))


def test_router_side_import_is_torch_free():
    code = "import sys, kv_transfer.block_hash; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_whole_prompt_path_equals_block_by_block_and_the_recorded_values():
    """iter_hashes packs the prompt once; it must give exactly hash_block's chain (which the
    engine's cache manager uses block by block) and the values every deployed worker has."""
    import random

    rng = random.Random(7)
    h = BlockHasher(16, "s")
    for salt in ((), ("tenant-a",), ("a", 3)):
        tokens = [rng.randrange(200_000) for _ in range(16 * 9 + 5)]
        chain, parent = [], None
        for i in range(9):
            parent = h.hash_block(parent, tokens[16 * i:16 * (i + 1)], salt)
            chain.append(parent)
        assert h.hash_prompt(tokens, salt) == chain
        assert list(h.iter_hashes(tokens, salt, parent=chain[3], start_block=4)) == chain[4:]
    # Recorded from the block-by-block implementation before the whole-prompt path existed.
    assert h.hash_prompt(list(range(64)), ("x",)) == [
        1844678401153234313, 14258295215686955334, 3648163497447880168, 10637256551069342022]
