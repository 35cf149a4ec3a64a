"""A request's output constraint: the grammar its tokens must follow (torch-free).

The router builds it from OpenAI's ``response_format`` (and from ``tool_choice`` required /
named); the engine compiles ``spec`` into a token matcher and masks the logits with it. The
value is plain text so it crosses the wire as two strings and hashes as a cache key.
"""

from __future__ import annotations

from dataclasses import dataclass

# json_schema: spec is a JSON Schema document (text); json_object: any JSON object (spec
# ignored, usually ""); regex: spec is a regular expression; ebnf: spec is a GBNF/EBNF grammar.
STRUCTURED_KINDS = ("json_schema", "json_object", "regex", "ebnf")


@dataclass(frozen=True)
class StructuredOutput:
    kind: str
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURED_KINDS:
            raise ValueError(
                f"structured output kind must be one of {', '.join(STRUCTURED_KINDS)}, "
                f"got {self.kind!r}"
            )
        if self.kind != "json_object" and not self.spec:
            raise ValueError(f"structured output of kind {self.kind!r} needs a spec")
