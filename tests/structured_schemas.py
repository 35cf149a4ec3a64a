"""Twenty JSON schemas for structured-output tests: small, and bounded (string lengths, array
sizes, integer ranges) so that any model, even one with random weights, must finish them."""

STR = {"type": "string", "maxLength": 16}
INT = {"type": "integer", "minimum": 0, "maximum": 9999}


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False}


SCHEMAS = [
    obj({"name": STR}),
    obj({"city": STR, "population": INT}),
    obj({"answer": {"type": "boolean"}}),
    obj({"color": {"enum": ["red", "green", "blue"]}}),
    obj({"tags": {"type": "array", "items": STR, "minItems": 1, "maxItems": 3}}),
    obj({"point": obj({"x": INT, "y": INT})}),
    obj({"id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"}}),
    obj({"kind": {"const": "user"}, "age": {"type": "integer", "minimum": 18, "maximum": 99}}),
    obj({"value": {"anyOf": [INT, {"type": "null"}]}}),
    obj({"items": {"type": "array", "items": obj({"sku": STR, "qty": INT}), "maxItems": 2}}),
    obj({"title": STR, "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
         "genre": {"enum": ["drama", "comedy", "horror"]}}),
    obj({"ok": {"type": "boolean"}, "code": {"type": "integer", "minimum": 100,
                                             "maximum": 599}}),
    {"type": "array", "items": INT, "minItems": 1, "maxItems": 4},
    {"enum": ["yes", "no", "maybe"]},
    obj({"first": STR, "last": STR, "middle": STR}, required=["first", "last"]),
    obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}),
    obj({"matrix": {"type": "array", "maxItems": 2,
                    "items": {"type": "array", "items": INT, "maxItems": 2}}}),
    obj({"status": {"oneOf": [{"const": "active"}, {"const": "inactive"}]}, "n": INT}),
    {"$defs": {"leaf": obj({"v": INT})}, **obj({"left": {"$ref": "#/$defs/leaf"},
                                               "right": {"$ref": "#/$defs/leaf"}})},
    obj({"email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"},
         "verified": {"type": "boolean"}}),
]
assert len(SCHEMAS) == 20
