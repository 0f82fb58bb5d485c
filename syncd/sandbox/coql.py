"""The sandbox's COQL: the subset of Zoho's query language syncd uses, with Zoho's own limits.

``select f, ... from Module where <criteria> [order by f [asc|desc]] [limit n [offset m]]``, where
criteria are ``f = 'v'``, ``f in ('v', ...)``, ``f is [not] null``, joined by ``and`` / ``or``
with brackets. As in Zoho: keywords are case-insensitive, text comparisons too; an ``in`` takes
at most 50 values, a WHERE at most 25 criteria, and three criteria or more must be bracketed
pairwise (``a or b or c`` is a syntax error). Errors are raised as ``ZohoError`` with Zoho's codes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from syncd.sandbox.state import ZohoError

IN_VALUES_LIMIT = 50
CRITERIA_LIMIT = 25
ROWS_LIMIT = 2000

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<word>[A-Za-z_][A-Za-z0-9_.]*)|(?P<op>[(),=*]))")
Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]


@dataclass(frozen=True)
class Query:
    fields: list[str]
    referenced: list[str]
    """Fields the WHERE clause compares."""
    module: str
    where: Predicate
    order_by: str | None
    descending: bool
    limit: int
    offset: int


def _syntax(near: str) -> ZohoError:
    return ZohoError(400, "SYNTAX_ERROR", "error occured while parsing the query", {"clause": near or "end of query"})


class _Parser:
    def __init__(self, text: str):
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise _syntax(text[pos : pos + 20])
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0
        self.referenced: list[str] = []

    def peek(self) -> str:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else ""

    def take(self, kind: str | None = None) -> str:
        if self.i >= len(self.tokens) or (kind and self.tokens[self.i][0] != kind):
            raise _syntax(self.peek())
        self.i += 1
        return self.tokens[self.i - 1][1]

    def keyword(self, word: str) -> bool:
        if self.peek().lower() == word:
            self.i += 1
            return True
        return False

    def expect(self, word: str) -> None:
        if not self.keyword(word) and self.take() != word:
            raise _syntax(self.peek())

    def query(self) -> Query:
        self.expect("select")
        fields = [self.take("word")]
        while self.peek() == ",":
            self.take()
            fields.append(self.take("word"))
        self.expect("from")
        module = self.take("word")
        where: Predicate = lambda row: True  # noqa: E731 - no WHERE: every row
        if self.keyword("where"):
            where = self.condition()
        order, descending = None, False
        if self.keyword("order"):
            self.expect("by")
            order = self.take("word")
            descending = self.keyword("desc")
            if not descending:
                self.keyword("asc")
        limit, offset = 200, 0
        if self.keyword("limit"):
            limit = int(self.take("num"))
            if self.peek() == ",":  # "limit offset, count"
                self.take()
                offset, limit = limit, int(self.take("num"))
            elif self.keyword("offset"):
                offset = int(self.take("num"))
        if self.i != len(self.tokens):
            raise _syntax(self.peek())
        if limit > ROWS_LIMIT:
            raise ZohoError(400, "LIMIT_EXCEEDED", f"limit exceeded: at most {ROWS_LIMIT} rows", {"limit": ROWS_LIMIT})
        return Query(fields, self.referenced, module, where, order, descending, limit, offset)

    def condition(self) -> Predicate:
        """One criterion or a bracketed group; ``x op y`` chains longer than two must be bracketed."""
        left = self.operand()
        if self.peek().lower() not in ("and", "or"):
            return left
        joiner = self.take().lower()
        right = self.operand()
        if self.peek().lower() in ("and", "or"):
            raise _syntax(self.peek())
        if joiner == "and":
            return lambda row: left(row) and right(row)
        return lambda row: left(row) or right(row)

    def operand(self) -> Predicate:
        if self.peek() == "(":
            self.take()
            inner = self.condition()
            self.expect(")")
            return inner
        return self.criterion()

    def criterion(self) -> Predicate:
        if len(self.referenced) >= CRITERIA_LIMIT:
            raise ZohoError(400, "LIMIT_EXCEEDED", f"at most {CRITERIA_LIMIT} criteria in a WHERE clause",
                            {"limit": CRITERIA_LIMIT})
        field = self.take("word")
        self.referenced.append(field)
        if self.keyword("is"):
            negate = self.keyword("not")
            self.expect("null")
            return lambda row: (row.get(field) in (None, "")) != negate
        if self.keyword("in"):
            self.expect("(")
            values = [self.string()]
            while self.peek() == ",":
                self.take()
                values.append(self.string())
            self.expect(")")
            if len(values) > IN_VALUES_LIMIT:
                raise ZohoError(400, "LIMIT_EXCEEDED", f"at most {IN_VALUES_LIMIT} values in an in clause",
                                {"limit": IN_VALUES_LIMIT, "field": field})
            wanted = {v.casefold() for v in values}
            return lambda row: isinstance(row.get(field), str) and row[field].casefold() in wanted
        self.expect("=")
        value = self.string().casefold()
        return lambda row: isinstance(row.get(field), str) and row[field].casefold() == value

    def string(self) -> str:
        literal = self.take("str")
        return re.sub(r"\\(.)", r"\1", literal[1:-1])


def run(text: str, rows_of: Callable[[str], list[dict[str, Any]] | None], fields_of: Callable[[str], set[str]]) -> tuple[list[dict[str, Any]], bool]:
    """The rows a query selects (only its fields, plus ``id``) and whether more remain past its limit."""
    query = _Parser(text).query()
    rows = rows_of(query.module)
    if rows is None:
        raise ZohoError(400, "INVALID_QUERY", "invalid module", {"module": query.module})
    known = fields_of(query.module) | {"id"}
    unknown = [f for f in query.fields + query.referenced if f not in known]
    if unknown:
        raise ZohoError(400, "INVALID_QUERY", "column given seems to be invalid", {"column_name": unknown[0]})
    selected = [r for r in rows if query.where(r)]
    key = query.order_by or "id"
    selected.sort(key=lambda r: (str(r.get(key) or "").zfill(20) if key == "id" else str(r.get(key) or "")),
                  reverse=query.descending)
    page = selected[query.offset : query.offset + query.limit]
    return [{"id": r["id"], **{f: r.get(f) for f in query.fields}} for r in page], len(selected) > query.offset + query.limit
