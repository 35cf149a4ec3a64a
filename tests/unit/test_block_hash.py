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
