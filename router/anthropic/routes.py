"""``POST /v1/messages``: Anthropic's request translated to a chat request
(router/anthropic/translate.py), prepared like any chat request (router/chat_route.py), and
answered in Anthropic's shapes (router/anthropic/respond.py). Errors on these paths are in
Anthropic's shape (app.py's handlers ask ``router/anthropic/errors.py``)."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from pydantic import ValidationError

from router.anthropic.respond import respond_messages
from router.anthropic.translate import MessagesRequest, to_chat
from router.chat_route import prepare_chat
from router.request_validation import validation_error


def add_routes(app: FastAPI, state, authorize, salt_of) -> None:
    @app.post("/v1/messages")
    async def messages(body: MessagesRequest, request: Request,
                       api_key: str | None = Depends(authorize)):
        state.model.check_name(body.model)
        try:
            chat = to_chat(body)
        except ValidationError as e:
            raise validation_error([{**err, "loc": ("body", *err["loc"])}
                                    for err in e.errors()]) from None
        slot = state.admit(api_key)
        try:
            job = await prepare_chat(state, chat, salt_of(api_key, chat), id_prefix="msg-",
                                     on_finish=state.on_finish(api_key))
        except BaseException:
            slot.release()
            raise
        return await respond_messages(state, request, job, body.model, body.stream, slot,
                                      chat.stop_list())
