"""What a request's output must conform to, enforced by grammar-constrained decoding in the
engine: ``kind`` names the grammar language, ``spec`` is its text."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("json_schema", "json_object", "regex", "ebnf")


@dataclass(frozen=True)
class StructuredOutput:
    kind: str  # "json_schema" | "json_object" | "regex" | "ebnf"
    spec: str  # the schema's JSON text, the regex, or the grammar ("" for json_object)
