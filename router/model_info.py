"""The served model as the router sees it: its names, vocabulary size and tokenizer (no
weights, no torch). Tokenizing a long text takes seconds (~0.5 s per million characters here),
so a prompt with more than ``OFF_LOOP_CHARS`` characters to encode is tokenized in a thread,
with the tokenizer's GIL-releasing batch call, and texts that cannot fit the context are refused
by length first (``router/prompt_bound.py``). Chat prompts are encoded piece by piece between
special tokens, the pieces seen before (system prompts) from a cache
(``router/prompt_tokens.py``), so only what is new counts toward that bound."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from common.model_ref import ModelRef, is_demo_prepared, parse_model_spec
from common.paths import default_cache_dir
from engine.text import token_bytes
from engine.text.tokenizer import ChatTemplateError, Tokenizer
from router import reasoning, tool_parsers
from router.config import RouterConfig
from router.errors import APIError, bad_request
from router.prompt_bound import max_chars_per_token, max_prompt_chars
from router.prompt_tokens import PieceEncoder

# Below this many characters, tokenize on the event loop. Measured here (2 shared cores, demo
# tokenizer): 64 chars 0.11 ms inline vs 0.19 ms through a thread (the hop is ~0.1 ms, most of
# a short prompt's cost); 1,024 chars ~0.75 ms either way; 4,096 chars 3.6 ms inline, a stall
# every concurrent stream would feel. So: off the loop from 1,024 characters.
OFF_LOOP_CHARS = 1024
# Messages longer than this are rendered off the loop too (a 1 MB message renders in ms).
OFF_LOOP_RENDER_CHARS = 65536


@dataclass
class ModelInfo:
    names: list[str]
    tokenizer: Tokenizer | None
    created: float = field(default_factory=time.time)
    vocab_size: int | None = None  # None: unknown here (the workers still check)
    chars_per_token: float | None = None  # see router/prompt_bound.py; None: no bound
    tool_parser: str | None = None  # router/tool_parsers/ name; None: calls are not parsed
    reasoning_parser: str | None = None  # router/reasoning/ name; None: no thinking split
    _pieces: PieceEncoder | None = field(default=None, repr=False)
    _bytes: token_bytes.TokenBytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.tokenizer is not None and self._pieces is None:
            self._pieces = PieceEncoder(self.tokenizer.backend)

    @classmethod
    def load(cls, config: RouterConfig) -> ModelInfo:
        spec = config.model
        cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        ref = parse_model_spec(spec, cache)
        names = ref.names
        tokenizer_dir: Path | None = Path(config.tokenizer) if config.tokenizer else None
        if tokenizer_dir is None and ref.kind == "hf_dir":
            if ref.is_demo and not is_demo_prepared(cache):
                raise FileNotFoundError(
                    "the demo model is not prepared in this cache: run "
                    "`pdserve prepare-demo` (or start a worker, which prepares it)")
            if Path(ref.location).is_dir():
                tokenizer_dir = Path(ref.location)
        if config.served_model_name:
            names.insert(0, config.served_model_name)
        tokenizer = None
        bound = None
        if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").exists():
            tokenizer = Tokenizer.from_dir(tokenizer_dir)
            bound = max_chars_per_token(tokenizer.backend.to_str(),
                                        tokenizer.backend.get_vocab(with_added_tokens=True))
        if tokenizer is not None and config.chat_template:
            tokenizer.chat_template = Path(config.chat_template).read_text()
        template = tokenizer.chat_template if tokenizer is not None else None
        model_dir = Path(ref.location) if ref.kind == "hf_dir" else None
        return cls(names, tokenizer, vocab_size=_vocab_size(ref, model_dir),
                   chars_per_token=bound,
                   tool_parser=tool_parsers.resolve(config.tool_call_parser, template),
                   reasoning_parser=reasoning.resolve(config.reasoning_parser, template))

    def check_name(self, name: str) -> None:
        if name not in self.names:
            raise APIError(404, f"The model `{name}` does not exist. Available: "
                           f"{', '.join(self.names)}", param="model", code="model_not_found")

    async def encode_chat(self, messages: list[dict], max_model_len: int) -> list[int]:
        return (await self.render_chat(messages, max_model_len))[1]

    async def render_chat(self, messages: list[dict], max_model_len: int,
                          tools: list[dict] | None = None,
                          template_kwargs: dict | None = None) -> tuple[str, list[int]]:
        """The prompt's text and token ids: ``tools`` (OpenAI's shape) and ``template_kwargs``
        go to the template as transformers' ``apply_chat_template`` passes them."""
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer or chat template; send token ids "
                              "to /v1/completions")
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        chars += len(json.dumps(tools)) if tools else 0

        def render() -> str:
            try:
                text = self.tokenizer.render_chat(messages, tools=tools or None,
                                                  **(template_kwargs or {}))
            except ChatTemplateError as e:
                raise bad_request(f"the chat template rejected the messages: {e}",
                                  param="messages") from None
            except (jinja2.TemplateError, TypeError, ValueError) as e:
                raise bad_request(f"the chat template failed on these messages: "
                                  f"{type(e).__name__}", param="messages") from None
            self._refuse_by_length(len(text), max_model_len, "messages")
            return text

        def work() -> tuple[str, list[int]]:
            text = render()
            return text, self._pieces.encode(text)

        if chars > OFF_LOOP_RENDER_CHARS:
            return await asyncio.to_thread(work)
        # Rendering is cheap (~25 us for 2 KB); what costs is encoding the pieces not seen
        # before (router/prompt_tokens.py): a thread only when there are many of them.
        text = render()
        if self._pieces.uncached_chars(text) > OFF_LOOP_CHARS:
            return text, await asyncio.to_thread(self._pieces.encode, text)
        return text, self._pieces.encode(text)

    async def encode_prompt(self, prompt, max_model_len: int) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
            if len(prompt) != 1:
                raise bad_request("batched prompts are not supported: send one prompt per "
                                  "request", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise bad_request("this model has no tokenizer: send the prompt as token ids",
                                  param="prompt")
            self._refuse_by_length(len(prompt), max_model_len, "prompt")
            if len(prompt) > OFF_LOOP_CHARS:
                ids = await asyncio.to_thread(self._encode, prompt)
            else:
                ids = self._encode(prompt)
        else:
            ids = list(prompt)
            if self.vocab_size is not None:
                bad = next((i for i, t in enumerate(ids) if t >= self.vocab_size), None)
                if bad is not None:
                    raise bad_request(f"prompt token ids must be below the vocabulary size "
                                      f"{self.vocab_size}; got {ids[bad]} at index {bad}",
                                      param="prompt", code="invalid_token_id")
        if not ids:
            raise bad_request("the prompt is empty", param="prompt")
        return ids

    def _refuse_by_length(self, chars: int, max_model_len: int, param: str) -> None:
        limit = max_prompt_chars(max_model_len, self.chars_per_token)
        if limit is not None and chars > limit:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"your prompt is {chars} characters, more than {max_model_len} tokens of this "
                f"tokenizer (whose longest token is {self.chars_per_token:g} characters). "
                f"Please reduce the length of the prompt.", param=param,
                code="context_length_exceeded")

    def _encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``Tokenizer.encode`` through the batch call, which releases the GIL (the single
        ``encode`` holds it, stalling the event loop even from a thread); its offset-free
        variant where the library has one (router/prompt_tokens.py)."""
        tok = self.tokenizer
        batch = getattr(tok.backend, "encode_batch_fast", tok.backend.encode_batch)
        ids = batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens and tok.add_bos_token and tok.bos_token_id is not None:
            ids = [tok.bos_token_id, *ids]
        return ids

    def token_text(self, token_id: int) -> str:
        """The token as a logprobs entry shows it: decoded alone, or, where that is only part
        of a character (U+FFFD), its bytes with the incomplete ones as ``\\xNN``."""
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return token_bytes.shown(self.token_bytes(token_id)) if "\ufffd" in text else text

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes the token stands for (engine/text/token_bytes.py)."""
        if self.tokenizer is None:
            return self.token_text(token_id).encode()
        if self._bytes is None:
            self._bytes = token_bytes.TokenBytes(self.tokenizer.backend)
        return self._bytes.bytes_of(token_id)


def _vocab_size(ref: ModelRef, model_dir: Path | None) -> int | None:
    if ref.kind == "random":
        from engine.model.named_shapes import named_model  # torch-free: shapes only

        try:
            return named_model(ref.location).vocab_size
        except (KeyError, ValueError):
            return None
    config = model_dir / "config.json" if model_dir is not None else None
    if config is None or not config.is_file():
        return None
    try:
        size = json.loads(config.read_text()).get("vocab_size")
    except (OSError, ValueError):
        return None
    return size if isinstance(size, int) and size > 0 else None
