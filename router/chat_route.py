"""``POST /v1/chat/completions`` up to the dispatcher: the template renders the messages and
tools, the request's tool_choice picks how the output is read (router/chat_output.py), and the
engine gets the prompt, the sampling parameters and any grammar. The Anthropic route
(router/anthropic/) comes through here too, so both get the same prompts and parsers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from router import reasoning
from router.chat_output import OutputShaper
from router.chat_request import (
    template_kwargs,
    template_messages,
    tool_setup,
)
from router.dispatcher import GenerateRequest
from router.errors import bad_request
from router.openai_schema import ChatCompletionRequest
from router.sampling_request import context_limit, sampling
from router.structured_map import precheck, requested_structured
from router.tool_parsers import PARSERS
from router.tool_parsers.forced import NamedParser, RequiredParser


@dataclass
class ChatJob:
    req: GenerateRequest
    shaper: OutputShaper
    legacy: bool  # answer with the legacy function_call


async def prepare_chat(state, body: ChatCompletionRequest, salt: tuple[str, ...],
                       id_prefix: str = "chatcmpl-", on_finish=None) -> ChatJob:
    """``on_finish(prompt_tokens, output_tokens)``: called when the request ends."""
    model = state.model
    setup = tool_setup(body)
    await precheck([requested_structured(body), *(s for _, s in setup.enforced_schemas())])
    setup.check_enforced_schemas()
    forced = setup.mode in ("required", "named")
    if setup.mode == "auto" and model.tool_parser is None:
        raise bad_request("this model's chat template has no tool-call format pdserve can "
                          "read: start the router with --tool-call-parser (and, if need be, "
                          "--chat-template), or send tool_choice 'required' or a named "
                          "function", param="tools")
    text, prompt = await model.render_chat(
        template_messages(body.messages), context_limit(state), tools=setup.tools or None,
        template_kwargs=template_kwargs(body))
    parser = None
    if setup.mode == "auto":
        parser = PARSERS[model.tool_parser]()
    elif setup.mode == "required":
        parser = RequiredParser()
    elif setup.mode == "named":
        parser = NamedParser(setup.function)
    # Forced output is calls from its first token: no thinking section to split off.
    think = (reasoning.make(model.reasoning_parser, text)
             if model.reasoning_parser and not forced else None)
    if (body.n or 1) > 1 and (parser is not None or think is not None):
        # The choices of n > 1 are plain text (router/respond_choices.py): refused, not mangled.
        raise bad_request("n > 1 is not supported with tools or a reasoning parser",
                          param="n")
    keep_special = bool(parser and parser.needs_special_tokens)
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = sampling(body, state, len(prompt), max_tokens,
                      logprobs=(body.top_logprobs or 0) if body.logprobs else None,
                      structured=setup.structured(), skip_special_tokens=not keep_special)
    eos = model.tokenizer.eos_token if keep_special else None
    shaper = OutputShaper(think, parser, single_call=not setup.parallel,
                          forced_name=setup.mode == "named", strip_suffix=eos)
    req = GenerateRequest(f"{id_prefix}{uuid.uuid4().hex}", prompt, params, salt, on_finish)
    return ChatJob(req, shaper, setup.legacy)
