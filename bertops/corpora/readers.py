"""Read a labelled corpus file (CSV, TSV or JSONL) into examples, stopping at the first bad row with
`file:line: what is wrong`."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from bertops.errors import CorpusError

SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Example:
    line: int
    text: str
    label: str
    text_pair: str | None = None
    group: str | None = None  # corpus.group_column's value: rows of one group share a split


def detect_format(path: Path, fmt: str = "auto", suffixes: dict[str, str] = SUFFIX_FORMATS) -> str:
    """`fmt` unless it is "auto"; then the format the file's suffix names in `suffixes`."""
    if fmt != "auto":
        return fmt
    try:
        return suffixes[path.suffix.lower()]
    except KeyError:
        formats = ", ".join(dict.fromkeys(suffixes.values()))
        raise CorpusError(path, None, f"cannot tell the format from suffix {path.suffix!r}: set corpus.format "
                                      f"to one of {formats} (known suffixes: {sorted(suffixes)})") from None


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CorpusError(path, line, f"not valid {encoding} text (set corpus.encoding): {exc.reason}") from None


def _field(record: dict, column: str, path: Path, line: int, required: bool = True) -> str | None:
    if column not in record or record[column] is None:
        if not required:
            return None
        raise CorpusError(path, line, f"missing field {column!r} (fields present: {sorted(k for k in record if k)})")
    value = record[column]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CorpusError(path, line, f"field {column!r} must be text or a number, got {type(value).__name__}")
    return str(value)


def _records(path: Path, fmt: str, encoding: str):
    """Yield (line number, record dict) pairs."""
    text = _decode(path, encoding)
    if fmt == "jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(path, lineno, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(record, dict):
                raise CorpusError(path, lineno, f"expected a JSON object, got {type(record).__name__}")
            yield lineno, record
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
    try:
        header = next(reader)
    except StopIteration:
        return
    if len(set(header)) != len(header):
        raise CorpusError(path, 1, f"duplicate column names in header {header}")
    start = reader.line_num + 1
    try:
        for row in reader:
            lineno, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise CorpusError(path, lineno, f"expected {len(header)} fields like the header, got {len(row)}")
            yield lineno, dict(zip(header, row))
    except csv.Error as exc:
        raise CorpusError(path, start, f"malformed {fmt.upper()} row: {exc}") from None


def read_examples(path: Path, *, fmt: str, encoding: str, text_column: str, label_column: str,
                  text_pair_column: str | None = None, labels: list[str] | None = None,
                  group_column: str | None = None) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise CorpusError(path, None, "file not found")
    fmt = detect_format(path, fmt)
    allowed = set(labels) if labels else None
    examples = []
    for lineno, record in _records(path, fmt, encoding):
        text = _field(record, text_column, path, lineno).strip()
        if not text:
            raise CorpusError(path, lineno, f"empty text in field {text_column!r}")
        pair = None
        if text_pair_column:
            pair = _field(record, text_pair_column, path, lineno).strip()
            if not pair:
                raise CorpusError(path, lineno, f"empty text in field {text_pair_column!r}")
        label = _field(record, label_column, path, lineno).strip()
        if not label:
            raise CorpusError(path, lineno, f"empty label in field {label_column!r}")
        if allowed is not None and label not in allowed:
            raise CorpusError(path, lineno, f"unknown label {label!r} (corpus.labels allows: {labels})")
        group = _field(record, group_column, path, lineno) if group_column else None
        examples.append(Example(lineno, text, label, pair, group))
    if not examples:
        raise CorpusError(path, None, "no examples: the file is empty or has only a header")
    return examples
