"""An independent reading of mcproxy's configuration files: the oracle of the corpus test.

Written from mcproxy's own code (github.com/mcproxy/mcproxy @ 0ec8c97): ``configuration.cpp``
(comments cut from ``#`` to the end of the line, commands split at ``;``, read in file
order), ``scanner.cpp`` (tokens), ``parser.cpp`` (what each command may say and when it
is refused) and ``proxy.cpp`` (table numbering). It shares no code with ``proxy.config``.

``read(text)`` gives ``("disabled", None)``, ``("rejected", (first, last))`` (the lines of the refused command) or ``("accepted", M)``
where ``M`` is what the file means to mcproxy: protocol, instances (upstreams, downstreams,
table: an int, or ``"default"`` for mcproxy's table 0), filters (flattened rules with
group and source as inclusive integer intervals) and the upstream rule matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

PROTOCOLS = {
    "igmpv1": "IGMPv1",
    "igmpv2": "IGMPv2",
    "igmpv3": "IGMPv3",
    "mldv1": "MLDv1",
    "mldv2": "MLDv2",
}
KEYWORDS = {
    "protocol", *PROTOCOLS, "pinstance", "upstream", "downstream", "rulematching", "out", "in",
    "blacklist", "whitelist", "table", "all", "first", "mutex", "disable",
}  # fmt: skip
PUNCT = {
    ":": "DD",
    ".": "DOT",
    "{": "{",
    "}": "}",
    "(": "(",
    ")": ")",
    "-": "RANGE",
    "/": "/",
    "*": "*",
    "|": "|",
}


class Rejected(Exception):
    pass


class Disabled(Exception):
    pass


@dataclass
class Tok:
    kind: str  # "STRING", a keyword in upper case, or a PUNCT value; "NIL" past the end
    text: str = ""


def scan(cmd: str) -> list[Tok]:
    toks, i, n = [], 0, len(cmd)
    while True:
        while i < n and cmd[i].isspace():
            i += 1
        if i >= n:
            return toks
        c = cmd[i]
        if c in PUNCT:
            toks.append(Tok(PUNCT[c]))
            i += 1
        elif c == "=":
            if cmd.startswith("==>", i):
                toks.append(Tok("ARROW"))
                i += 3
            else:
                return toks  # mcproxy's scanner ends the command here (a NIL token)
        elif c == '"':
            j = cmd.find('"', i + 1)
            j = n if j < 0 else j
            toks.append(Tok("STRING", cmd[i + 1 : j]))
            i = j + 1
        elif c.isalnum() or c == "_":
            j = i
            while j < n and (cmd[j].isalnum() or cmd[j] == "_"):
                j += 1
            word = cmd[i:j]
            toks.append(
                Tok(word.upper(), word) if word.lower() in KEYWORDS else Tok("STRING", word)
            )
            i = j
        else:
            raise Rejected(f"unsupported char {c!r}")


def commands(text: str) -> list[tuple[tuple[int, int], str]]:
    """The commands with their first and last line."""
    out, pos = [], 0
    while (cc := text.find("#", pos)) >= 0:
        eol = text.find("\n", cc + 1)
        text = text[:cc] if eol < 0 else text[:cc] + text[eol:]
        pos = cc
    line = 1
    for item in text.split(";"):
        stripped = item.strip()
        if stripped:
            first = line + item[: len(item) - len(item.lstrip())].count("\n")
            out.append(((first, first + stripped.count("\n")), stripped))
        line += item.count("\n")
    return out


class Command:
    def __init__(self, cmd: str, m: dict) -> None:
        self.toks, self.pos, self.m = scan(cmd), 0, m

    @property
    def cur(self) -> Tok:
        return self.toks[self.pos] if self.pos < len(self.toks) else Tok("NIL")

    def peek(self, k: int) -> Tok:
        i = self.pos + 1 + k
        return self.toks[i] if i < len(self.toks) else Tok("NIL")

    def next(self) -> Tok:
        self.pos += 1
        return self.cur

    def run(self) -> None:
        t = self.cur.kind
        if t == "DISABLE":
            raise Disabled
        if t == "PROTOCOL":
            p = self.next()
            if p.kind.lower() not in PROTOCOLS or self.next().kind != "NIL":
                raise Rejected("protocol")
            self.m["protocol"] = PROTOCOLS[p.kind.lower()]
        elif t == "TABLE":
            name, rules = self.table(inside=False)
            if name in self.m["tables"]:
                raise Rejected(f"table {name} already exists")
            self.m["tables"][name] = rules
        elif t == "PINSTANCE":
            after = self.peek(1).kind
            if after in ("DD", "("):
                self.definition()
            elif after in ("UPSTREAM", "DOWNSTREAM"):
                self.binding()
            else:
                raise Rejected("pinstance")
        else:
            raise Rejected(f"unknown token {t}")

    def family(self) -> int:
        return 6 if self.m["protocol"].startswith("MLD") else 4

    def definition(self) -> None:
        name = self.next()
        if name.kind != "STRING":
            raise Rejected("instance name")
        table = None
        if self.next().kind == "(":
            num = self.next()
            digits = num.text[: len(num.text) - len(num.text.lstrip("0123456789"))]
            if num.kind != "STRING" or not digits:
                raise Rejected("table number")
            table = int(digits)
            if self.next().kind != ")":
                raise Rejected("table number")
            self.next()
        if self.cur.kind != "DD":
            raise Rejected("':'")
        ups, downs = [], []
        while self.next().kind == "STRING":
            ups.append(self.cur.text)
        if self.cur.kind != "ARROW":
            raise Rejected("'==>'")
        while self.next().kind == "STRING":
            downs.append(self.cur.text)
        if not downs or self.cur.kind != "NIL":
            raise Rejected("downstreams")
        if name.text in self.m["instances"]:
            raise Rejected(f"instance {name.text} already exists")
        self.m["instances"][name.text] = {
            "upstreams": list(dict.fromkeys(ups)),
            "downstreams": list(dict.fromkeys(downs)),
            "explicit": table,
        }
        self.m["rulematching"][name.text] = {"in": ("first", 0), "out": ("all", 0)}

    def table(self, inside: bool) -> tuple[str, list]:
        end = ")" if inside else "NIL"
        t = self.next()
        if self.peek(0).kind == end:
            if t.kind != "STRING" or t.text not in self.m["tables"]:
                raise Rejected("table reference")
            self.next()
            return "", list(self.m["tables"][t.text])
        name = ""
        if t.kind == "STRING":
            name = t.text
            if self.next().kind != "{":
                raise Rejected("'{'")
        elif t.kind != "{":
            raise Rejected("table")
        rules: list = []
        self.next()
        while (r := self.rule()) is not None:
            rules.extend(r)
            self.next()
        if self.cur.kind != "}" or self.next().kind != end:
            raise Rejected("end of table")
        return name, rules

    def rule(self) -> list | None:
        if self.cur.kind not in ("STRING", "("):
            return None
        ifname = None
        if self.cur.kind == "STRING":
            ifname = self.cur.text
            self.next()
        if self.cur.kind != "(":
            raise Rejected("rule")
        if self.next().kind == "TABLE":
            return self.table(inside=True)[1]
        group = self.part()
        if self.cur.kind != "|":
            raise Rejected("'|'")
        self.next()
        source = self.part()
        if self.cur.kind != ")":
            raise Rejected("')'")
        return [(ifname, group, source)]

    def address(self) -> int:
        text = ""
        while self.cur.kind in ("STRING", "DOT", "DD"):
            text += {"DOT": ".", "DD": ":"}.get(self.cur.kind, self.cur.text)
            self.next()
        try:
            addr = ip_address(text)
        except ValueError:
            raise Rejected(f"address {text}") from None
        if addr.version != self.family():
            raise Rejected("wrong IP version")
        return int(addr)

    def part(self) -> tuple[int, int]:
        top = 2 ** (32 if self.family() == 4 else 128) - 1
        lo = hi = 0  # mcproxy's default address is the unspecified one, its wildcard
        if self.cur.kind == "STRING":
            lo = self.address()
        elif self.cur.kind == "*":
            self.next()
        else:
            raise Rejected("rule part")
        if self.cur.kind == "/":
            n = self.next()
            if n.kind != "STRING" or not n.text.isdigit() or int(n.text) > 128:
                raise Rejected("prefix")
            bits = 32 if self.family() == 4 else 128
            host = (1 << (bits - min(int(n.text), bits))) - 1
            lo, hi = lo & ~host, lo | host
            if self.next().kind not in (")", "|"):
                raise Rejected("prefix")
            return (lo, hi)
        if self.cur.kind in (")", "|"):
            return (0, top) if lo == 0 else (lo, lo)
        if self.cur.kind == "RANGE":
            if self.next().kind == "STRING":
                hi = self.address()
            elif self.cur.kind == "*":
                self.next()
            else:
                raise Rejected("range")
            if self.cur.kind in (")", "|"):
                return (lo, hi if hi else top)
        raise Rejected("rule part")

    def binding(self) -> None:
        inst = self.next().text
        if self.cur.kind != "STRING" or inst not in self.m["instances"]:
            raise Rejected("instance not defined")
        role = self.next().kind.lower()
        t = self.next()
        if t.kind not in ("STRING", "*"):
            raise Rejected("interface")
        ifname = t.text if t.kind == "STRING" else "*"
        direction = self.next().kind.lower()
        if direction not in ("in", "out"):
            raise Rejected("direction")
        what = self.next().kind
        if what in ("WHITELIST", "BLACKLIST"):
            self.next()
            if self.cur.kind != "TABLE":
                raise Rejected("table")
            _, rules = self.table(inside=False)
            if self.cur.kind != "NIL":
                raise Rejected("end")
            if ifname not in self.m["instances"][inst][role + "s"]:
                raise Rejected(f"{role} interface {ifname} not defined")
            key = (inst, role, ifname, direction)
            if key in self.m["filters"]:
                raise Rejected("filter already defined")
            self.m["filters"][key] = (what.lower(), rules)
        elif what == "RULEMATCHING":
            mode = self.next().kind.lower()
            timeout = 0
            if mode == "mutex":
                n = self.next()
                digits = n.text[: len(n.text) - len(n.text.lstrip("0123456789"))]
                if n.kind != "STRING" or not digits:
                    raise Rejected("mutex timeout")
                timeout = int(digits)
            elif mode not in ("all", "first"):
                raise Rejected("rule matching")
            if self.next().kind != "NIL":
                raise Rejected("end")
            if role == "upstream":  # proxy_instance.cpp ignores the others
                self.m["rulematching"][inst][direction] = (mode, timeout)
        else:
            raise Rejected("binding")


def table_numbers(instances: dict) -> dict[str, int | str]:
    """proxy.cpp start_proxy_instances: sorted by name, a counter, 0 for a lone instance."""
    out, counter = {}, 0
    for name in sorted(instances, key=str.encode):
        explicit = instances[name]["explicit"]
        if explicit is None:
            counter += 1
            if len(instances) <= 1:
                counter = 0
        else:
            counter = explicit
        out[name] = "default" if counter == 0 else counter
    return out


def read(text: str) -> tuple[str, object]:
    m: dict = {
        "protocol": "IGMPv3",
        "tables": {},
        "instances": {},
        "filters": {},
        "rulematching": {},
    }
    for lines, cmd in commands(text):
        try:
            Command(cmd, m).run()
        except Disabled:
            return ("disabled", None)
        except Rejected:
            return ("rejected", lines)
    numbers = table_numbers(m["instances"])
    for name, inst in m["instances"].items():
        inst["table"] = numbers[name]
        del inst["explicit"]
    del m["tables"]
    return ("accepted", m)
