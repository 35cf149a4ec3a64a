"""The smaller routes: ``GET /v1/models/{id}``, ``POST /tokenize`` and ``POST /detokenize``
(vLLM's shapes: a prompt, or chat messages rendered by the template with their tools), and
``GET /version``."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from router.chat_request import template_kwargs, template_messages, tool_setup
from router.errors import bad_request
from router.openai_schema import ChatCompletionRequest, ChatMessage, Text, Tool
from router.sampling_request import context_limit


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Text | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Text | None = None
    tokens: list[int] = Field(max_length=1 << 20)


def _version() -> str:
    try:
        return importlib.metadata.version("pdserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_routes(app: FastAPI, state, authorize) -> None:
    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorize)])
    async def model(model_id: str):
        state.model.check_name(model_id)
        return {"id": model_id, "object": "model", "created": int(state.model.created),
                "owned_by": "pdserve"}

    @app.get("/version")
    async def version():
        return {"version": _version()}

    @app.post("/tokenize", dependencies=[Depends(authorize)])
    async def tokenize(body: TokenizeRequest):
        m = _model(state, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("send either prompt or messages", param="prompt")
        limit = context_limit(state) if state.max_model_len() else 1 << 40
        if body.prompt is not None:
            ids = await m.encode_prompt(body.prompt, limit) if body.prompt else []
            if body.add_special_tokens is False and ids[:1] == [m.tokenizer.bos_token_id] \
                    and m.tokenizer.add_bos_token:
                ids = ids[1:]
        else:
            chat = ChatCompletionRequest(model="", messages=body.messages, tools=body.tools,
                                         chat_template_kwargs=body.chat_template_kwargs)
            setup = tool_setup(chat)
            kwargs = template_kwargs(chat)
            if not body.add_generation_prompt:
                kwargs["add_generation_prompt"] = False
            _, ids = await m.render_chat(template_messages(body.messages), limit,
                                         tools=setup.tools or None, template_kwargs=kwargs)
        out = {"count": len(ids), "max_model_len": state.max_model_len(), "tokens": ids,
               "token_strs": None}
        if body.return_token_strs:
            out["token_strs"] = [m.tokenizer.id_to_token(t) for t in ids]
        return out

    @app.post("/detokenize", dependencies=[Depends(authorize)])
    async def detokenize(body: DetokenizeRequest):
        m = _model(state, body.model)
        vocab = m.vocab_size or m.tokenizer.vocab_size
        bad = next((i for i, t in enumerate(body.tokens) if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(f"token ids must be in [0, {vocab}); got {body.tokens[bad]} at "
                              f"index {bad}", param="tokens", code="invalid_token_id")
        return {"prompt": m.tokenizer.decode(body.tokens, skip_special_tokens=False)}


def _model(state, name: str | None):
    if name is not None:
        state.model.check_name(name)
    if state.model.tokenizer is None:
        raise bad_request("this model has no tokenizer")
    return state.model
