"""Piece-by-piece prompt tokenization (router/prompt_tokens.py) gives exactly the ids of
encoding the whole text, for the demo tokenizer (which qualifies) and for one that does not."""

import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from router.prompt_tokens import PieceEncoder


@pytest.fixture(scope="module")
def demo_tokenizer():
    from common.model_ref import demo_model_dir, is_demo_prepared
    from common.paths import default_cache_dir

    cache = default_cache_dir()
    if not is_demo_prepared(cache):
        pytest.skip("demo model not prepared")
    return Tokenizer.from_file(str(demo_model_dir(cache) / "tokenizer.json"))


def _texts(specials: list[str], n: int = 200) -> list[str]:
    rng = random.Random(0)
    words = ["hello", " world", "12345", "  ", "\n", "\n\n", "é", "漢字", "!", "?", " a", "don't",
             "  x", "\t", "ok"]
    system = "".join(rng.choice(words) for _ in range(300))
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(specials))
            parts.append(system if rng.random() < 0.3 else
                         "".join(rng.choice(words) for _ in range(rng.randint(0, 40))))
        out.append("".join(parts))
    return out


def test_pieces_match_whole_encoding_and_hit_the_cache(demo_tokenizer):
    enc = PieceEncoder(demo_tokenizer)
    assert enc.splits  # ByteLevel BPE without an added prefix space: pieces are independent
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "", "<|im_start|>user\n"]
    texts = _texts(specials)
    for text in texts + texts:  # the second pass is served from the cache
        assert enc.encode(text) == demo_tokenizer.encode(text, add_special_tokens=False).ids
    assert enc.uncached_chars(texts[0]) == 0
    assert enc.uncached_chars(texts[0] + "<|im_end|> something new") == len(" something new")


def test_a_tokenizer_whose_pieces_depend_on_each_other_is_encoded_whole():
    vocab = {"[UNK]": 0, "▁a": 1, "a": 2, "▁": 3, "<s>": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.add_special_tokens(["<s>"])
    enc = PieceEncoder(tok)
    assert not enc.splits
    for text in ["a<s>a", "<s>a a", "a"]:
        assert enc.encode(text) == tok.encode(text, add_special_tokens=False).ids
