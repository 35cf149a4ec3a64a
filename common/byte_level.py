"""GPT-2's byte-level alphabet: each of the 256 bytes as one printable character, the table
byte-level BPE vocabularies (GPT-2, Llama 3, Qwen, SmolLM) write their entries in."""

from __future__ import annotations


def char_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: printable bytes map to themselves, the
    other 68 to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table
