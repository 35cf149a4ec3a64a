"""OpenAI request bodies, validated by pydantic at the API boundary.

What is checked here, so nothing hostile reaches the tokenizer, the proto or the workers:

- Integer widths of the wire (proto/pdserve.proto): ``max_tokens`` fits uint32, ``top_k``
  int32, ``seed`` int64, prompt token ids uint32 (the vocabulary is checked in
  ``router/model_info.py``, which knows it).
- Floats are finite. ``temperature`` below ``GREEDY_TEMPERATURE`` (1e-5) is greedy: the sampler
  never divides by less than 1e-5 (engine/runner/sampler.py) and float32 on the wire turns anything
  under ~1e-45 into 0, so without this rule 1e-6 sampled at 1e-5 while 1e-300 was greedy.
  Greedy is the limit of sampling as the temperature goes to 0 (vLLM's threshold is the same).
  ``top_p`` is any value in (0, 1]; one that float32 rounds to 0 (e.g. 5e-324) is sent as the
  smallest positive float32, which keeps exactly what the client asked for: only the top token.
- Strings are valid Unicode (no lone surrogates such as ``"\\ud800"``, which JSON can carry
  but UTF-8, the tokenizer and protobuf cannot).

Fields this schema does not declare are kept (``extra="allow"``) so that
``router/request_validation.py`` can refuse them by name (400, ``param`` set) or, with the
router's ``--lenient``, ignore them with a warning. A field sent with a value that asks for
nothing we do not do is accepted, because common clients send such defaults explicitly: any
field set to ``null``, and ``store: false``, ``modalities: ["text"]``, ``stop_token_ids: []``,
``best_of: 1``. Everything else unknown is refused; the list lives in
``request_validation.INERT_VALUES``.

Honoured beyond the basics (issue 18): tools, ``tool_choice``, the legacy ``functions`` /
``function_call`` and the calls in the history (router/chat_request.py); ``response_format``
(text, json_object, json_schema; enforced by grammar-constrained decoding,
router/structured_map.py), ``logit_bias``, ``min_tokens``, ``repetition_penalty``,
``include_stop_str_in_output``, ``stream_options.continuous_usage_stats`` and ``n`` up to
``MAX_CHOICES``.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_LIMIT = 2**32  # exclusive
GREEDY_TEMPERATURE = 1e-5  # below this, sampling is greedy (see the module docstring)
SMALLEST_FLOAT32 = struct.unpack("<f", struct.pack("<I", 1))[0]  # 1.4e-45, subnormal
MAX_CHOICES = 8  # n: choices per request (one prefill, the choices share its KV)
MAX_STOP_CHARS = 1024  # per stop sequence: the engine looks for each in every token's text


def check_unicode(text: str) -> str:
    """Refuse lone surrogates: they cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the text is not valid Unicode (a lone surrogate at character "
                         f"{e.start})") from None
    return text


Text = Annotated[str, AfterValidator(check_unicode)]


def float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


# strict: a value of the wrong JSON type is refused, not coerced (``"max_tokens": "5"`` or
# ``true``, ``"stream": "true"``), as OpenAI refuses it; an integer is still a number.
_STRICT = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False
    continuous_usage_stats: bool = False  # usage on every chunk (vLLM's extension)


class JSONSchemaFormat(BaseModel):
    model_config = _STRICT
    name: Text = Field(min_length=1, max_length=64)
    description: Text | None = None
    schema_: dict | bool = Field(alias="schema")
    strict: bool | None = None  # enforced either way: the grammar always constrains


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ContentPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: Text


FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: FunctionName
    arguments: Text = ""  # JSON text, as the model wrote it


class ToolCall(BaseModel):
    model_config = _STRICT
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(BaseModel):
    model_config = _STRICT
    name: FunctionName
    description: Text | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None


class Tool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDef


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Any = None  # a string, a list of text parts, or null (validated below)
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_call_id: Text | None = None  # a tool message: which call it answers
    function_call: FunctionCall | None = None  # the legacy form of one call

    @field_validator("content")
    @classmethod
    def _content(cls, content):
        if content is None or isinstance(content, ContentPart):
            return content
        if isinstance(content, str):
            return check_unicode(content)
        if not isinstance(content, list):
            raise ValueError("content must be a string, a list of text parts, or null")
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, ContentPart):
                parts.append(part)
                continue
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ValueError(f"content part {i}: only parts of type 'text' are supported")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"content part {i}: 'text' must be a string")
            check_unicode(part["text"])
            parts.append(ContentPart.model_validate(part))
        return parts

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Common(BaseModel):
    model_config = _STRICT
    model: Text
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stop: Any = None  # a string or up to 4 strings (validated below)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: Text | None = None
    # Extensions (vLLM-compatible names): top_k, per-tenant cache isolation, ignore_eos.
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    cache_salt: Text | None = None
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> [-100, 100]
    min_tokens: int | None = Field(default=None, ge=0, lt=UINT32_LIMIT)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    include_stop_str_in_output: bool = False

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias):
        for key, value in (bias or {}).items():
            if not (key.isascii() and key.isdigit()) or int(key) >= UINT32_LIMIT:
                raise ValueError(f"logit_bias keys must be token ids, got {key[:32]!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {value}")
        return bias

    @field_validator("temperature")
    @classmethod
    def _greedy_below_epsilon(cls, t: float | None) -> float | None:
        return 0.0 if t is not None and t < GREEDY_TEMPERATURE else t

    @field_validator("top_p")
    @classmethod
    def _top_p_survives_float32(cls, p: float | None) -> float | None:
        # Only the top token survives any top_p this small, so this changes no outcome.
        return SMALLEST_FLOAT32 if p is not None and float32(p) == 0.0 else p

    @field_validator("cache_salt")
    @classmethod
    def _salt(cls, salt):
        if salt is not None and not salt:
            raise ValueError("cache_salt must not be empty (omit it for the key's own cache)")
        return salt

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("stop must be a string or a list of strings")
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters")
        for s in stops:
            check_unicode(s)
        return stop

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, lt=UINT32_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, lt=UINT32_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Tool calling (router/chat_request.py); functions / function_call are the legacy form.
    tools: list[Tool] | None = None
    tool_choice: Any = None  # "none" | "auto" | "required" | {"type": "function", ...}
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None
    function_call: Any = None  # "none" | "auto" | {"name": ...}
    chat_template_kwargs: dict[str, Any] | None = None  # extra template variables (vLLM's)


def _check_token_ids(ids: list, where: str) -> list[int]:
    for i, t in enumerate(ids):
        if type(t) is not int or not 0 <= t < UINT32_LIMIT:
            shown = repr(t) if type(t) is int and len(str(t)) <= 24 else type(t).__name__
            raise ValueError(f"{where}token ids must be integers in [0, 2^32); got {shown} "
                             f"at index {i}")
    return ids


class CompletionRequest(_Common):
    prompt: Any  # a string, token ids, or a batch of one of either (validated below)
    max_tokens: int | None = Field(default=16, ge=1, lt=UINT32_LIMIT)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: Text | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt):
        if isinstance(prompt, str):
            return check_unicode(prompt)
        if not isinstance(prompt, list):
            raise ValueError("prompt must be a string, a list of token ids, or a list of one "
                             "of either")
        if prompt and all(isinstance(p, str) for p in prompt):
            for p in prompt:
                check_unicode(p)
            return prompt
        if prompt and all(isinstance(p, list) for p in prompt):
            for j, p in enumerate(prompt):
                _check_token_ids(p, f"prompt {j}: ")
            return prompt
        return _check_token_ids(prompt, "")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix):
        if suffix:
            raise ValueError("suffix is not supported")
        return suffix
