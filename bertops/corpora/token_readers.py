"""Read a token-classification corpus (CoNLL-style `token<TAB>tag` lines, tab- or space-separated, any line
endings; or JSONL with token and tag lists) into sentences, stopping at the first bad line with
`file:line: what is wrong`. Tags are kept in the corpus's own scheme (BIO, BIOES, BMES or BILOU)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bertops.corpora.readers import _decode, _records, detect_format
from bertops.errors import CorpusError

TOKEN_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".conll": "conll", ".bio": "conll", ".iob": "conll",
                        ".txt": "conll"}
# each scheme's prefixes in span order: begin, inside, end, single (BMES: M = inside; BILOU: L = last, U = unit)
SCHEME_PREFIXES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S"), "BMES": ("B", "M", "E", "S"),
                   "BILOU": ("B", "I", "L", "U")}


@dataclass(frozen=True)
class TokenExample:
    line: int  # line of the sentence's first token (CoNLL) or of its JSON object (JSONL)
    tokens: tuple[str, ...]
    tags: tuple[str, ...]


def detect_token_format(path: Path, fmt: str = "auto") -> str:
    return detect_format(path, fmt, TOKEN_SUFFIX_FORMATS)


def check_tag(tag: str, scheme: str) -> str | None:
    """None if `tag` fits the scheme, else what is wrong with it."""
    if tag == "O":
        return None
    prefix, sep, entity = tag.partition("-")
    if not sep or not entity or prefix not in SCHEME_PREFIXES[scheme]:
        allowed = ", ".join(f"{p}-TYPE" for p in SCHEME_PREFIXES[scheme])
        return f"tag {tag!r} is not in the {scheme} scheme (O, {allowed}; set task.tag_scheme)"
    return None


def parse_conll(text: str, where: str | Path) -> list[TokenExample]:
    """`token<TAB>tag` per line (or whitespace-separated columns: first = token, last = tag, as in CoNLL-2003);
    a blank or whitespace-only line ends a sentence; `-DOCSTART-` lines are skipped."""
    sentences, tokens, tags, first_line = [], [], [], None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if tokens:
                sentences.append(TokenExample(first_line, tuple(tokens), tuple(tags)))
            tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if fields[0].startswith("-DOCSTART-"):
            continue
        if len(fields) < 2 or not fields[0] or not fields[-1]:
            raise CorpusError(where, lineno, f"expected 'token<TAB>tag', got {line!r}")
        if not tokens:
            first_line = lineno
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append(TokenExample(first_line, tuple(tokens), tuple(tags)))
    return sentences


def _parse_jsonl(path: Path, encoding: str, tokens_column: str, tags_column: str) -> list[TokenExample]:
    sentences = []
    for lineno, record in _records(path, "jsonl", encoding):
        columns = []
        for column in (tokens_column, tags_column):
            value = record.get(column)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CorpusError(path, lineno, f"field {column!r} must be a list of strings "
                                                f"(fields present: {sorted(record)})")
            columns.append(tuple(v.strip() for v in value))
        tokens, tags = columns
        if len(tokens) != len(tags):
            raise CorpusError(path, lineno, f"{len(tokens)} tokens but {len(tags)} tags")
        if not tokens:
            raise CorpusError(path, lineno, f"empty token list in field {tokens_column!r}")
        if any(not t for t in tokens):
            raise CorpusError(path, lineno, f"empty token in field {tokens_column!r}")
        sentences.append(TokenExample(lineno, tokens, tags))
    return sentences


def read_token_examples(path: Path, *, fmt: str, encoding: str, tokens_column: str, tags_column: str,
                        scheme: str, labels: list[str] | None = None) -> list[TokenExample]:
    path = Path(path)
    if not path.is_file():
        raise CorpusError(path, None, "file not found")
    fmt = detect_token_format(path, fmt)
    if fmt not in ("conll", "jsonl"):
        raise CorpusError(path, None, f"token classification reads conll or jsonl files, not {fmt}")
    sentences = (parse_conll(_decode(path, encoding), path) if fmt == "conll"
                 else _parse_jsonl(path, encoding, tokens_column, tags_column))
    if not sentences:
        raise CorpusError(path, None, "no sentences: the file is empty")
    allowed = set(labels) if labels else None
    # CoNLL: a bad tag's own line is the sentence's first line plus its position
    offset = (lambda ex, i: ex.line + i) if fmt == "conll" else (lambda ex, i: ex.line)
    for ex in sentences:
        for i, tag in enumerate(ex.tags):
            problem = check_tag(tag, scheme)
            if problem is None and allowed is not None and tag not in allowed:
                problem = f"unknown tag {tag!r} (corpus.labels allows: {labels})"
            if problem:
                raise CorpusError(path, offset(ex, i), problem)
    return sentences


def entity_types(tags) -> list[str]:
    return sorted({re.sub(r"^[BIESMLU]-", "", t) for t in tags if t != "O"})
