"""The scanner of the configuration grammar: text -> ``Token``s with line and column."""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.config.model import ConfigError

_PUNCT = frozenset(";:.(){}|*/-+")
_WORD = re.compile(r"[A-Za-z0-9_]+")
#: mcproxy's scanner turns these into keyword tokens, so unquoted they were never names
#: there; keeping them reserved lets a forgotten ';' be reported where it is.
RESERVED = frozenset(
    {
        *("protocol", "mldv1", "mldv2", "igmpv1", "igmpv2", "igmpv3", "pinstance", "table"),
        *("upstream", "downstream", "in", "out", "whitelist", "blacklist", "rulematching"),
        *("all", "first", "mutex", "disable"),
    }
)
NAME_GLUE = frozenset({"word", ".", "-"})
ADDR_GLUE = frozenset({"word", ".", ":"})
VALUE_GLUE = frozenset({"word", "."})
KEY_GLUE = frozenset({"word", "-"})


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "word", "string", "eof" or the punctuation itself (";", "==>", ...)
    text: str
    line: int
    col: int
    start: int
    end: int

    @property
    def shown(self) -> str:
        if self.kind == "eof":
            return "end of file"
        if self.kind == "string":
            return f'"{self.text}"'
        return f"'{self.text}'"

    @property
    def end_col(self) -> int:
        return self.col + (self.end - self.start)


def tokenize(text: str, path: str) -> list[Token]:
    tokens: list[Token] = []
    i, line, line_start, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line, line_start, i = line + 1, i + 1, i + 1
            continue
        if c.isspace():
            i += 1
            continue
        col = i - line_start + 1
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] not in '"\n':
                j += 1
            if j >= n or text[j] == "\n":
                raise ConfigError(path, line, col, "unterminated quoted name (no closing '\"')")
            tokens.append(Token("string", text[i + 1 : j], line, col, i, j + 1))
            i = j + 1
            continue
        m = _WORD.match(text, i)
        if m:
            tokens.append(Token("word", m.group(), line, col, i, m.end()))
            i = m.end()
            continue
        if text.startswith("==>", i):
            tokens.append(Token("==>", "==>", line, col, i, i + 3))
            i += 3
            continue
        if c in _PUNCT:
            tokens.append(Token(c, c, line, col, i, i + 1))
            i += 1
            continue
        hint = " (did you mean '==>'?)" if c == "=" else ""
        raise ConfigError(path, line, col, f"unexpected character {c!r}{hint}")
    tokens.append(Token("eof", "", line, n - line_start + 1, n, n))
    return tokens
