"""Read a labelled corpus as the user has it into examples, stopping at the first bad row with `file:line: what is
wrong`:

- CSV or TSV (a UTF-8 byte-order mark and CRLF line endings are fine), a header row naming the columns;
- JSONL, one object per line; a column may be a dotted path into nested objects (`review.body`);
- Parquet (what Hugging Face datasets export), read with pyarrow; the row number stands where a line would;
- a folder with one sub-folder of .txt files per label (`data/own/<label>/*.txt`, the layout of scikit-learn's
  `load_files`): each file is one text, its folder's name its label; the file's path stands in errors.

Labels may be text or integers."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from bertops.errors import CorpusError

SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
                  ".pq": "parquet"}
FOLDER = "folder"  # a directory: one sub-folder of .txt files per label


@dataclass(frozen=True)
class Example:
    line: int
    text: str
    label: str
    text_pair: str | None = None
    group: str | None = None  # corpus.group_column's value: rows of one group share a split


def detect_format(path: Path, fmt: str = "auto", suffixes: dict[str, str] = SUFFIX_FORMATS) -> str:
    """`fmt` unless it is "auto"; then "folder" for a directory, else the format the file's suffix names in
    `suffixes`."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        if suffixes is SUFFIX_FORMATS:
            return FOLDER
        raise CorpusError(path, None, "is a directory: this task reads one corpus file")
    try:
        return suffixes[path.suffix.lower()]
    except KeyError:
        formats = ", ".join(dict.fromkeys(suffixes.values()))
        raise CorpusError(path, None, f"cannot tell the format from suffix {path.suffix!r}: set corpus.format "
                                      f"to one of {formats} (known suffixes: {sorted(suffixes)})") from None


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CorpusError(path, line, f"not valid {encoding} text (set corpus.encoding): {exc.reason}") from None
    return text.removeprefix("\ufeff")  # a byte-order mark (Excel's "CSV UTF-8") is not part of the first field


def _lookup(record: dict, column: str):
    """record[column], or for a dotted path (`review.body`) the nested value; None where it is missing."""
    if column in record:
        return record[column]
    value = record
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _field(record: dict, column: str, path: Path, line: int | None, required: bool = True) -> str | None:
    value = _lookup(record, column)
    if value is None:
        if not required:
            return None
        raise CorpusError(path, line, f"missing field {column!r} (fields present: {sorted(k for k in record if k)})")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CorpusError(path, line, f"field {column!r} must be text or a number, got {type(value).__name__}")
    return str(value)


def _parquet_records(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        raise CorpusError(path, None, f"not a readable Parquet file: {exc}") from None
    yield from enumerate(table.to_pylist(), start=1)


def _folder_records(path: Path, encoding: str):
    """(file, record) pairs: each .txt file under a label's sub-folder is one text."""
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise CorpusError(path, None, "a folder corpus needs one sub-folder of .txt files per label "
                                      "(<folder>/<label>/*.txt); found no sub-folders")
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        for file in files:
            if file.suffix.lower() != ".txt":
                raise CorpusError(file, None, "a folder corpus holds .txt files only (one text per file)")
            yield file, {"text": _decode(file, encoding), "label": folder.name}


def _records(path: Path, fmt: str, encoding: str):
    """Yield (where, record dict) pairs: `where` is the line number (the row number for Parquet), or the text's
    own file for a folder corpus."""
    if fmt == "parquet":
        yield from _parquet_records(path)
        return
    if fmt == FOLDER:
        yield from _folder_records(path, encoding)
        return
    text = _decode(path, encoding)
    if fmt == "jsonl":
        # JSON Lines ends a line at \n only: str.splitlines would also cut at U+2028, U+0085 or \x1c, which a
        # JSON string may hold unescaped (json.dumps(..., ensure_ascii=False) writes them as they are)
        for lineno, line in enumerate(text.split("\n"), start=1):
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


def label_order(labels) -> list[str]:
    """Labels in order: by number when every label is an integer (2 before 10), else alphabetically."""
    labels = set(labels)
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    return sorted(labels, key=int if numeric else None)


def read_examples(path: Path, *, fmt: str, encoding: str, text_column: str, label_column: str,
                  text_pair_column: str | None = None, labels: list[str] | None = None,
                  group_column: str | None = None) -> list[Example]:
    path = Path(path)
    if not path.exists():
        raise CorpusError(path, None, "file not found")
    fmt = detect_format(path, fmt)
    if (fmt == FOLDER) != path.is_dir():
        raise CorpusError(path, None, "a folder corpus is a directory (<folder>/<label>/*.txt)" if fmt == FOLDER
                          else "is a directory: set corpus.format to folder, or point corpus.source at a file")
    if fmt == FOLDER:  # the folder layout fixes the fields
        text_column, label_column, text_pair_column, group_column = "text", "label", None, None
    allowed = set(labels) if labels else None
    examples = []
    for where, record in _records(path, fmt, encoding):
        # a folder corpus's errors name the text's own file, the others the corpus file and its line
        file, lineno = (where, None) if isinstance(where, Path) else (path, where)
        text = _field(record, text_column, file, lineno).strip()
        if not text:
            raise CorpusError(file, lineno, f"empty text in field {text_column!r}")
        pair = None
        if text_pair_column:
            pair = _field(record, text_pair_column, file, lineno).strip()
            if not pair:
                raise CorpusError(file, lineno, f"empty text in field {text_pair_column!r}")
        label = _field(record, label_column, file, lineno).strip()
        if not label:
            raise CorpusError(file, lineno, f"empty label in field {label_column!r}")
        if allowed is not None and label not in allowed:
            raise CorpusError(file, lineno, f"unknown label {label!r} (corpus.labels allows: {labels})")
        group = _field(record, group_column, file, lineno) if group_column else None
        examples.append(Example(lineno if lineno is not None else len(examples) + 1, text, label, pair, group))
    if not examples:
        raise CorpusError(path, None, "no examples: the file is empty or has only a header")
    return examples
