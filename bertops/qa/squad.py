"""Read SQuAD-format JSON (v1.1, and v2.0 with unanswerable questions) into flat questions, stopping at the first
bad entry with the file and the JSON path of the question (`data[0].paragraphs[3].qas[1]`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertops.errors import CorpusError


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, character start); empty = unanswerable (v2.0)
    paragraph: str  # "data[i].paragraphs[j]", where it is in the file
    title: str = ""  # the article's title: with the context, what keeps a paragraph's questions in one split

    def as_row(self) -> dict:
        return {"id": self.id, "question": self.question, "context": self.context,
                "answers": {"text": [a[0] for a in self.answers], "answer_start": [a[1] for a in self.answers]},
                "paragraph": self.paragraph}


def _need(value, kind, path: Path, where: str, what: str):
    if not isinstance(value, kind):
        raise CorpusError(path, None, f"{where}: {what} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def read_squad(path: Path, encoding: str = "utf-8") -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise CorpusError(path, None, "file not found")
    try:
        doc = json.loads(path.read_text(encoding=encoding))
    except json.JSONDecodeError as exc:
        raise CorpusError(path, exc.lineno, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(path, None, f"not valid {encoding} text (set corpus.encoding): {exc.reason}") from None
    data = _need(doc.get("data") if isinstance(doc, dict) else None, list, path, "(top level)",
                 "'data' (SQuAD format: {\"data\": [{\"paragraphs\": [{\"context\", \"qas\"}]}]})")
    questions, seen = [], {}
    for i, article in enumerate(data):
        paragraphs = _need(_need(article, dict, path, f"data[{i}]", "an article").get("paragraphs"), list, path,
                           f"data[{i}]", "'paragraphs'")
        title = article.get("title") if isinstance(article.get("title"), str) else ""
        for j, paragraph in enumerate(paragraphs):
            where_p = f"data[{i}].paragraphs[{j}]"
            context = _need(_need(paragraph, dict, path, where_p, "a paragraph").get("context"), str, path,
                            where_p, "'context'")
            if not context.strip():
                raise CorpusError(path, None, f"{where_p}: empty context")
            for k, qa in enumerate(_need(paragraph.get("qas"), list, path, where_p, "'qas'")):
                where = f"{where_p}.qas[{k}]"
                qa = _need(qa, dict, path, where, "a question")
                qid = str(qa.get("id", where))
                text = _need(qa.get("question"), str, path, where, "'question'").strip()
                if not text:
                    raise CorpusError(path, None, f"{where}: empty question")
                if qid in seen:
                    raise CorpusError(path, None, f"{where}: duplicate id {qid!r} (also at {seen[qid]})")
                seen[qid] = where
                impossible = bool(qa.get("is_impossible", False))
                answers = []
                for a, answer in enumerate(_need(qa.get("answers", []), list, path, where, "'answers'")):
                    answer = _need(answer, dict, path, f"{where}.answers[{a}]", "an answer")
                    atext = _need(answer.get("text"), str, path, f"{where}.answers[{a}]", "'text'")
                    start = answer.get("answer_start")
                    if isinstance(start, bool) or not isinstance(start, int):
                        raise CorpusError(path, None, f"{where}.answers[{a}]: 'answer_start' must be an int")
                    if not atext or context[start:start + len(atext)] != atext:
                        raise CorpusError(path, None, f"{where}.answers[{a}]: the context at {start} reads "
                                                      f"{context[start:start + len(atext)]!r}, not the answer "
                                                      f"{atext!r}")
                    answers.append((atext, start))
                if impossible:
                    answers = []  # v2.0 keeps plausible answers for impossible questions; they are not gold
                elif not answers:
                    raise CorpusError(path, None, f"{where}: no answers and not marked is_impossible")
                questions.append(Question(qid, text, context, tuple(answers), where_p, title))
    if not questions:
        raise CorpusError(path, None, "no questions: the file has no data[].paragraphs[].qas[]")
    return questions
