"""The one rendering rule: every control, format, separator and invisible character is
escaped, every other character is left alone, nothing is cut unless a summary asks for it."""

from __future__ import annotations

import json
import unicodedata

from broker.inert import shown, shown_json
from tests.broker.corpus import CORPUS, DANGEROUS, LONG, TAIL, assert_escaped, assert_inert

INVISIBLE = "\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0" + "".join(
    map(chr, [*range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]))


def test_every_code_point_is_escaped_or_left_as_it_is() -> None:
    everything = "".join(map(chr, range(0x110000)))
    short = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

    def expected(char: str) -> str:
        if unicodedata.category(char) not in DANGEROUS and char not in INVISIBLE:
            return char
        code = ord(char)
        return short.get(char) or (f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")

    out = shown(everything)
    assert_inert(out, layout="")
    assert out == "".join(map(expected, everything))


def test_each_corpus_entry_is_escaped_and_plain_text_is_left_alone() -> None:
    for text, seen in CORPUS.values():
        out = shown(text)
        assert_inert(out, layout="")
        assert seen in out
    assert_escaped(shown(" ".join(t for t, _ in CORPUS.values())))
    for plain in ("hello, world", "/out/report.txt", "Grüße 世界 ✅ — \\x1b is text",
                  "a\u00a0b"):  # a no-break space draws as a space: kept
        assert shown(plain) == plain
    assert shown("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert shown("\U000e0041") == "\\U000e0041"  # a tag character, beyond the BMP
    assert shown("\ud800") == "\\ud800"  # a lone surrogate would crash an encoder
    assert shown(shown(CORPUS["osc52"][0])) == shown(CORPUS["osc52"][0])  # idempotent


def test_nothing_is_cut_unless_a_summary_asks_and_a_cut_is_marked() -> None:
    assert shown(LONG) == shown(LONG, None) and TAIL in shown(LONG)
    summary = shown(LONG, 40)
    assert len(summary) == 40 and summary.endswith("…") and TAIL not in summary
    assert shown("x" * 40, 40) == "x" * 40
    # A summary counts what is shown, and never cuts an escape in half.
    assert shown("\x1b" * 10, 14) == "\\u001b\\u001b…"
    assert shown("ab\n", 4) == "ab\\n" and shown("ab\nc", 4) == "ab…"


def test_json_is_whole_one_key_per_line_and_inert() -> None:
    value = {"data": LONG + CORPUS["line"][0], "path": "/out/a.txt", "n": [1, None]}
    out = shown_json(value, indent=2)
    assert_inert(out)  # its line breaks are the layout's own
    assert '  "path": "/out/a.txt",' in out.split("\n")
    assert json.loads(out) == value  # escapes in JSON's notation: the same value
    assert json.loads(shown_json(value)) == value
    assert shown({"k": "\x1b"}) == '{"k": "\\u001b"}'
