"""Logprobs carry each token's own bytes (engine/text/token_bytes.py): for byte-level BPE and
SentencePiece byte fallback alike, the bytes of a text's tokens join to the text, a token that
is only part of a character shows its bytes as ``\\xNN`` instead of "�", and completions'
``text_offset`` counts characters of the text, not tokens."""

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from common.outputs import TokenLogprob
from engine.text.token_bytes import TokenBytes, shown
from router import openai_format as fmt

TEXT = "Smiley 😀😀 日本語, café ▁ naïve"


def _byte_level() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Smiley faces and some text, café naïve"] * 20, trainer)
    return tok


def _byte_fallback() -> Tokenizer:
    """Llama 2's layout: <0xNN> entries, "▁" for a space, the decoder's Replace step."""
    vocab = {"<unk>": 0, "<s>": 1}
    vocab.update({f"<0x{b:02X}>": 2 + b for b in range(256)})
    for piece in ["▁", "S", "m", "i", "l", "e", "y", "c", "a", "f", ",", "n", "v"]:
        vocab[piece] = len(vocab)
    spec = {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": 1, "content": "<s>", "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}],
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            "pre_tokenizer": None, "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": True, "byte_fallback": True, "vocab": vocab, "merges": []}}
    return Tokenizer.from_str(json.dumps(spec))


class _Vocab:
    def __init__(self, tok: Tokenizer):
        self.tok, self.bytes = tok, TokenBytes(tok)

    def token_text(self, token_id: int) -> str:
        text = self.tok.decode([token_id], skip_special_tokens=False)
        return shown(self.token_bytes(token_id)) if "\ufffd" in text else text

    def token_bytes(self, token_id: int) -> bytes:
        return self.bytes.bytes_of(token_id)


def _check(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False).ids
    vocab = _Vocab(tok)
    assert b"".join(vocab.token_bytes(i) for i in ids) == tok.decode(ids).encode()
    partial = [i for i in ids if "\ufffd" in tok.decode([i])]
    assert partial, "the text should split a character across tokens"
    for i in partial:
        assert "\ufffd" not in vocab.token_text(i)
        assert "\\x" in vocab.token_text(i)
    logprobs = [TokenLogprob(i, -0.5, ((i, -0.5),)) for i in ids]
    chat = fmt.chat_logprobs(logprobs, vocab)["content"]
    assert b"".join(bytes(e["bytes"]) for e in chat) == tok.decode(ids).encode()
    assert all(bytes(e["top_logprobs"][0]["bytes"]) == bytes(e["bytes"]) for e in chat)
    offsets = fmt.completion_logprobs(logprobs, vocab, 3)["text_offset"]
    decoded = tok.decode(ids)
    assert offsets[0] == 3 and max(offsets) <= 3 + len(decoded)
    # A token's offset is the length of the text its predecessors complete.
    for k, i in enumerate(ids):
        before = b"".join(vocab.token_bytes(j) for j in ids[:k]).decode("utf-8", "ignore")
        assert offsets[k] == 3 + len(before), (k, i)


def test_byte_level_bpe_tokens_give_their_bytes():
    _check(_byte_level(), TEXT)


def test_byte_fallback_tokens_give_their_bytes():
    tok = _byte_fallback()
    _check(tok, TEXT)
    vocab = _Vocab(tok)
    assert vocab.token_bytes(tok.token_to_id("▁")) == b" "
    assert vocab.token_bytes(1) == b"<s>"  # an added token: its content


def test_every_whole_token_keeps_its_decoded_text():
    tok = _byte_level()
    vocab = _Vocab(tok)
    for i in range(tok.get_vocab_size()):
        text = tok.decode([i], skip_special_tokens=False)
        if "\ufffd" not in text:
            assert vocab.token_bytes(i) == text.encode() and vocab.token_text(i) == text
