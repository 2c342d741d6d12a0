"""A user's corpus as they have it: Parquet, a folder of <label>/*.txt files, integer labels, CSV/TSV with a BOM
and CRLF line endings, JSONL with nested fields, CoNLL with spaces or tabs and CRLF, and the BMES and BILOU tag
schemes. Each reads into the same examples as a plain CSV of the same rows, bad rows stop with the file and line
(or the file), and every format goes through the real `dvc repro` of import and prepare."""

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from bertops.config import parse_params
from bertops.corpora.readers import read_examples
from bertops.corpora.token_readers import read_token_examples
from bertops.errors import CorpusError
from bertops.layout import Layout
from bertops.ner_metrics import entity_scores, entity_spans
from bertops.stages.import_corpus import import_corpus
from bertops.stages.prepare import prepare
from bertops.tasks.token_classification import tag_order

from conftest import REPO, make_pipeline_repo, synthetic_reviews, tiny_params

ROWS = synthetic_reviews(60)
LABEL_IDS = {"negative": 0, "positive": 1}


def write_classification(root, fmt: str) -> dict:
    """The 60 rows of ROWS written in `fmt` under `root`; returns the corpus params that read it."""
    if fmt == "csv-bom-crlf":  # what Excel's "CSV UTF-8" writes
        lines = ["review,sentiment", *(f'"{t}",{label}' for t, label in ROWS)]
        (root / "corpus.csv").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
        return {"source": "corpus.csv"}
    if fmt == "tsv-crlf":
        lines = ["review\tsentiment", *(f"{t}\t{label}" for t, label in ROWS)]
        (root / "corpus.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
        return {"source": "corpus.tsv"}
    if fmt == "jsonl-nested-int-labels":
        lines = [json.dumps({"review": {"body": t, "stars": 3}, "meta": {"label": LABEL_IDS[label]}})
                 for t, label in ROWS]
        (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
        return {"source": "corpus.jsonl", "text_column": "review.body", "label_column": "meta.label"}
    if fmt == "parquet":
        table = pa.table({"review": [t for t, _ in ROWS], "sentiment": [LABEL_IDS[label] for _, label in ROWS]})
        pq.write_table(table, root / "corpus.parquet")
        return {"source": "corpus.parquet"}
    if fmt == "folder":  # scikit-learn's load_files layout
        for i, (text, label) in enumerate(ROWS):
            (root / "own" / label).mkdir(parents=True, exist_ok=True)
            (root / "own" / label / f"{i:03d}.txt").write_text(text + "\n")
        return {"source": "own"}
    raise ValueError(fmt)


FORMATS = ["csv-bom-crlf", "tsv-crlf", "jsonl-nested-int-labels", "parquet", "folder"]
INT_LABELS = {"jsonl-nested-int-labels", "parquet"}


def expected(fmt: str) -> set[tuple[str, str]]:
    return {(t, str(LABEL_IDS[label]) if fmt in INT_LABELS else label) for t, label in ROWS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_the_same_examples(tmp_path, fmt):
    corpus = {"text_column": "review", "label_column": "sentiment", **write_classification(tmp_path, fmt)}
    examples = read_examples(tmp_path / corpus["source"], fmt="auto", encoding="utf-8",
                             text_column=corpus["text_column"], label_column=corpus["label_column"])
    assert {(ex.text, ex.label) for ex in examples} == expected(fmt)


def test_integer_labels_are_ordered_by_number(tmp_path):
    rows = [json.dumps({"text": f"text {i}", "label": i % 12}) for i in range(48)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(rows) + "\n")
    raw = tiny_params("unused", corpus__source="corpus.jsonl", corpus__text_column="text",
                      corpus__label_column="label")
    params, layout = parse_params(raw), Layout(tmp_path)
    import_corpus(params, layout)
    prepare(params, layout)
    assert json.loads(layout.labels_file.read_text()) == [str(i) for i in range(12)]  # 2 before 10


def _stop(root, raw) -> str:
    params, layout = parse_params(raw), Layout(root)
    with pytest.raises(CorpusError) as err:
        import_corpus(params, layout)
        prepare(params, layout)
    assert not (root / "data" / "prepared" / "train.jsonl").exists()  # nothing half-written
    return str(err.value)


def test_bad_parquet_rows_name_the_row(tmp_path):
    pq.write_table(pa.table({"review": ["good film", "fine film", None], "sentiment": ["pos", "pos", "neg"]}),
                   tmp_path / "corpus.parquet")
    message = _stop(tmp_path, tiny_params("unused", corpus__source="corpus.parquet"))
    assert "corpus.parquet:3: missing field 'review'" in message, message
    (tmp_path / "broken.parquet").write_text("review,sentiment\n")
    message = _stop(tmp_path, tiny_params("unused", corpus__source="broken.parquet"))
    assert "not a readable Parquet file" in message, message


def test_a_folder_corpus_names_the_bad_file(tmp_path):
    write_classification(tmp_path, "folder")
    (tmp_path / "own" / "positive" / "017.txt").write_text("  \n")
    message = _stop(tmp_path, tiny_params("unused", corpus__source="own"))
    assert "corpus.folder/positive/017.txt: empty text" in message, message  # import's copy of own/
    (tmp_path / "own" / "positive" / "017.txt").write_text("fine again")
    (tmp_path / "own" / "positive" / "notes.md").write_text("not a text")
    message = _stop(tmp_path, tiny_params("unused", corpus__source="own"))
    assert "corpus.folder/positive/notes.md: a folder corpus holds .txt files only" in message, message
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.txt").write_text("no label folder")
    message = _stop(tmp_path, tiny_params("unused", corpus__source="flat"))
    assert "one sub-folder of .txt files per label" in message, message


def test_a_bad_nested_field_names_the_line(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"review": {"body": "fine"}, "label": "a"}\n'
                                           '{"review": {"title": "no body"}, "label": "b"}\n')
    message = _stop(tmp_path, tiny_params("unused", corpus__source="corpus.jsonl", corpus__text_column="review.body",
                                          corpus__label_column="label"))
    assert "corpus.jsonl:2: missing field 'review.body'" in message, message


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """json.dumps(ensure_ascii=False) writes U+2028, U+0085 and \\x1c unescaped; str.splitlines cuts at them."""
    texts = ["a line\u2028separator", "next\x85line", "file\x1cseparator", "plain"]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t, "label": "a"}, ensure_ascii=False) + "\n"
                                                   for t in texts))
    examples = read_examples(tmp_path / "corpus.jsonl", fmt="auto", encoding="utf-8", text_column="text",
                             label_column="label")
    assert [ex.text for ex in examples] == texts
    assert [ex.line for ex in examples] == [1, 2, 3, 4]


def test_an_email_reads_as_its_subject_and_body():
    """The SpamAssassin converter's text: Subject + the body (plain part first, else HTML without its tags),
    transfer encodings undone, routing headers dropped."""
    from bertops.corpora.packaged import email_text

    multipart = ("From: a@b.example\nReceived: from mx.relay.example by relay\nSubject: Cheap =?utf-8?q?caf=C3=A9?=\n"
                 "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=XX\n\n--XX\n"
                 "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
                 "<p>Buy <b>now</b> =E2=80=94 50% off</p><style>p{color:red}</style>\n--XX--\n")
    text = email_text(multipart)
    assert text.startswith("Cheap café\n\n") and "Buy now — 50% off" in text, text
    assert "relay" not in text and "<" not in text and "color" not in text
    plain = ("Subject: Re: build\nContent-Type: multipart/alternative; boundary=YY\n\n--YY\n"
             "Content-Type: text/plain\n\nThe build is green.\n--YY\nContent-Type: text/html\n\n<p>html</p>\n--YY--\n")
    assert email_text(plain) == "Re: build\n\nThe build is green."


# ---- token classification: CoNLL as written, four tag schemes ----------------------------------------------------
BIOES = [["S-PER", "O", "B-ORG", "I-ORG", "E-ORG"], ["B-LOC", "E-LOC", "O"]]
TRANSLATE = {"BMES": {"I": "M"}, "BILOU": {"E": "L", "S": "U"}, "BIOES": {}}
WORDS = [["Ann", "joined", "Acme", "Widget", "Corp"], ["New", "York", "!"]]


def in_scheme(scheme: str, sentences=BIOES) -> list[list[str]]:
    table = TRANSLATE[scheme]
    return [[t if t == "O" else table.get(t[0], t[0]) + t[1:] for t in tags] for tags in sentences]


@pytest.mark.parametrize("scheme,separator,newline", [("BMES", " ", "\r\n"), ("BILOU", "\t", "\r\n"),
                                                      ("BMES", "\t", "\n")])
def test_conll_schemes_separators_and_line_endings(tmp_path, scheme, separator, newline):
    tags = in_scheme(scheme)
    text = newline.join(newline.join(f"{w}{separator}{t}" for w, t in zip(words, sentence, strict=True)) + newline
                        for words, sentence in zip(WORDS, tags, strict=True))
    (tmp_path / "corpus.conll").write_bytes(text.encode())
    read = read_token_examples(tmp_path / "corpus.conll", fmt="auto", encoding="utf-8", tokens_column="tokens",
                               tags_column="tags", scheme=scheme)
    assert [list(ex.tokens) for ex in read] == WORDS and [list(ex.tags) for ex in read] == tags
    # the same entities, the same scores as the BIOES spelling
    for sentence, bioes in zip(tags, BIOES, strict=True):
        assert entity_spans(sentence, scheme) == entity_spans(bioes, "BIOES")
    assert entity_scores(tags, tags, scheme)["f1"] == 1.0 and entity_scores(tags, tags, scheme)["entities"] == 3
    wrong = [tags[0], ["O", "O", "O"]]
    assert entity_scores(tags, wrong, scheme) == entity_scores(BIOES, [BIOES[0], ["O", "O", "O"]], "BIOES")
    assert tag_order(t for s in tags for t in s)[0] == "O"


def test_a_tag_outside_the_scheme_names_its_line(tmp_path):
    (tmp_path / "corpus.conll").write_text("Ann S-PER\njoined O\n\nNew B-LOC\nYork E-LOC\n")
    with pytest.raises(CorpusError) as err:
        read_token_examples(tmp_path / "corpus.conll", fmt="auto", encoding="utf-8", tokens_column="tokens",
                            tags_column="tags", scheme="BILOU")
    assert "corpus.conll:1: tag 'S-PER' is not in the BILOU scheme" in str(err.value), str(err.value)


# ---- `bertops init` for each format, then the real `dvc repro` ----------------------------------------------------
def _init(*argv: str) -> None:
    from bertops.cli import build_parser
    from bertops.scaffold import init_pipeline

    init_pipeline(build_parser().parse_args(["init", *argv]))


def test_init_scaffolds_each_format_and_dvc_repro_runs_them(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A bertops checkout (the real dvc.yaml and code), one `bertops init` per format and tag scheme, then one
    `dvc repro`: import and prepare for every pipeline, and the whole pipeline through register for the folder
    corpus. Each prepared corpus holds its rows; params.yaml reads back as written; dvc.yaml is what
    scripts/sync_pipelines.py writes."""
    from bertops.config import load_params
    from bertops.pipeline_files import pipeline_dvc_yaml

    make_pipeline_repo(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # DVC parses the root pipeline too
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "own"
    data.mkdir(parents=True)
    pipes = {}
    for fmt in FORMATS:
        fixture = data / fmt
        fixture.mkdir()
        corpus = {"text_column": "review", "label_column": "sentiment", **write_classification(fixture, fmt)}
        _init(f"pipelines/{fmt}", "--task", "sequence_classification", "--source", str(fixture / corpus["source"]),
              "--text-column", corpus["text_column"], "--label-column", corpus["label_column"],
              "--model", str(tiny_model_dir), "--name", f"tiny-{fmt}", "--max-length", "32")
        pipes[fmt] = tmp_path / "pipelines" / fmt
        printed = capsys.readouterr().out
        assert "corpus: 60 rows" in printed and "length in tokens: median" in printed, printed
        assert f"dvc repro pipelines/{fmt}/dvc.yaml" in printed and "mlflow models serve" in printed, printed
    for scheme, separator in (("BMES", " "), ("BILOU", "\t")):
        sentences = [(WORDS[i % 2] + [str(i)], in_scheme(scheme)[i % 2] + ["O"]) for i in range(30)]
        text = "".join("\r\n".join(f"{w}{separator}{t}" for w, t in zip(words, tags, strict=True)) + "\r\n\r\n"
                       for words, tags in sentences)
        (data / f"{scheme}.conll").write_bytes(text.encode())
        name = f"ner-{scheme.lower()}"
        _init(f"pipelines/{name}", "--task", "token_classification", "--source", f"data/own/{scheme}.conll",
              "--tag-scheme", scheme, "--model", str(tiny_model_dir), "--max-length", "32")
        pipes[name] = tmp_path / "pipelines" / name
        assert "corpus: 30 rows" in capsys.readouterr().out

    for name, pipe in pipes.items():
        assert (pipe / "dvc.yaml").read_text() == pipeline_dvc_yaml(pipe, tmp_path)
        params = load_params(pipe / "params.yaml")
        assert params.registry.model_name == (f"tiny-{name}" if name in FORMATS else name)
        if name.startswith("ner-"):  # the family's measured schedule, with its comment
            assert params.train.epochs == 15 and "measured on WNUT-16" in (pipe / "params.yaml").read_text()
    with pytest.raises(Exception, match="already has a params.yaml"):
        _init("pipelines/folder", "--task", "sequence_classification", "--source", str(data / "folder" / "own"))

    for pipe in pipes.values():  # the tiny model's schedule
        raw = yaml.safe_load((pipe / "params.yaml").read_text())
        # 60 rows: 36 to train on, 3 steps an epoch, so more epochs than tiny_params' 6 (of 12 steps)
        raw["train"].update(epochs=30, lr=3e-3, early_stopping_patience=None)
        raw["corpus"]["split"].update(val=0.2, test=0.2)
        (pipe / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    targets = [f"pipelines/{name}/dvc.yaml:prepare" for name in pipes if name != "folder"] + ["pipelines/folder/dvc.yaml"]
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", *targets], cwd=tmp_path, capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name, pipe in pipes.items():
        prepared = [json.loads(line) for split in ("train", "val", "test")
                    for line in (pipe / "data" / "prepared" / f"{split}.jsonl").read_text().splitlines()]
        if name.startswith("ner-"):
            assert len(prepared) == 30 and all(len(r["tokens"]) == len(r["tags"]) for r in prepared)
            assert {t for r in prepared for t in r["tags"]} == {t for s in in_scheme(name[4:].upper()) for t in s}
        else:
            assert {(r["text"], r["label"]) for r in prepared} == expected(name)
    metrics = json.loads((pipes["folder"] / "reports" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.8, metrics  # the folder corpus trained, was evaluated and registered
    assert "pipelines/folder/dvc.yaml:register" in done.stdout
