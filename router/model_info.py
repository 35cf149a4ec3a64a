"""The served model as the router sees it: its names and its tokenizer (no weights, no torch)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.tokenizer import ChatTemplateError, Tokenizer
from router.config import RouterConfig
from router.errors import APIError, bad_request


@dataclass
class ModelInfo:
    names: list[str]
    tokenizer: Tokenizer | None
    created: float = field(default_factory=time.time)

    @classmethod
    def load(cls, config: RouterConfig) -> ModelInfo:
        spec = config.model
        names: list[str] = []
        tokenizer_dir: Path | None = Path(config.tokenizer) if config.tokenizer else None
        if spec == "demo":
            from engine.demo_model import DEMO_NAME, demo_model_dir, is_prepared
            from engine.paths import default_cache_dir

            cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
            names = [DEMO_NAME, "demo"]
            if tokenizer_dir is None:
                if not is_prepared(cache):
                    raise FileNotFoundError(
                        "the demo model is not prepared in this cache: run "
                        "`pdserve prepare-demo` (or start a worker, which prepares it)")
                tokenizer_dir = demo_model_dir(cache)
        elif spec.startswith("random:"):
            names = [spec]
        else:
            path = Path(spec).expanduser()
            names = [path.stem if path.suffix == ".gguf" else path.name]
            if tokenizer_dir is None and path.is_dir():
                tokenizer_dir = path
        if config.served_model_name:
            names.insert(0, config.served_model_name)
        tokenizer = None
        if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").exists():
            tokenizer = Tokenizer.from_dir(tokenizer_dir)
        return cls(names, tokenizer)

    def check_name(self, name: str) -> None:
        if name not in self.names:
            raise APIError(404, f"The model `{name}` does not exist. Available: "
                           f"{', '.join(self.names)}", param="model", code="model_not_found")

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer or chat template; send token ids "
                              "to /v1/completions")
        try:
            ids = self.tokenizer.encode_chat(messages)
        except ChatTemplateError as e:
            raise bad_request(f"the chat template rejected the messages: {e}",
                              param="messages") from None
        return ids

    def encode_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
            if len(prompt) != 1:
                raise bad_request("batched prompts are not supported: send one prompt per "
                                  "request", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise bad_request("this model has no tokenizer: send the prompt as token ids",
                                  param="prompt")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
        if not ids:
            raise bad_request("the prompt is empty", param="prompt")
        return ids

    def token_text(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
