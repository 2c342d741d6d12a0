"""Corpus validation (file:line errors), deduplication and stratified splits."""

import json

import pytest
import yaml

from bertops.config import parse_params
from bertops.errors import CorpusError
from bertops.layout import Layout
from bertops.stages.import_corpus import import_corpus
from bertops.stages.prepare import prepare

from conftest import synthetic_reviews, tiny_params, write_corpus_csv


def run_import_prepare(root, params_dict):
    params = parse_params(params_dict)
    layout = Layout(root)
    import_corpus(params, layout)
    return prepare(params, layout), layout


@pytest.mark.parametrize("content,where,problem", [
    ("review,sentiment\ngood film,positive\nbad film,negative,extra\n", "corpus.csv:3", "expected 2 fields"),
    ("review,sentiment\ngood film,positive\n   ,negative\n", "corpus.csv:3", "empty text in field 'review'"),
    ("review,sentiment\ngood film,positive\nok film,neutral\n", "corpus.csv:3", "unknown label 'neutral'"),
    ("", "corpus.csv", "no examples"),
    ("review,sentiment\n", "corpus.csv", "no examples"),
    ("text,sentiment\ngood film,positive\n", "corpus.csv:2", "missing field 'review'"),
    ('review,sentiment\n"good film,positive\n', "corpus.csv:2", "expected 2 fields"),
    ("review,sentiment\ngood film,\n", "corpus.csv:2", "empty label"),
])
def test_bad_csv_rows_stop_with_file_and_line(tmp_path, content, where, problem):
    (tmp_path / "corpus.csv").write_text(content)
    raw = tiny_params("unused", corpus__labels=["negative", "positive"])
    with pytest.raises(CorpusError) as err:
        run_import_prepare(tmp_path, raw)
    message = str(err.value)
    assert where in message and problem in message, message
    assert not (tmp_path / "data" / "prepared" / "train.jsonl").exists()  # nothing half-written


@pytest.mark.parametrize("lines,where,problem", [
    (['{"review": "a fine film", "sentiment": "positive"}', '{"review": "oops"'], "corpus.jsonl:2", "not valid JSON"),
    (['{"review": "a fine film", "sentiment": "positive"}', '["a list"]'], "corpus.jsonl:2", "expected a JSON object"),
    (['{"review": "fine", "sentiment": "positive"}', '', '{"review": ["x"], "sentiment": "negative"}'],
     "corpus.jsonl:3", "must be text or a number"),
])
def test_bad_jsonl_rows(tmp_path, lines, where, problem):
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    raw = tiny_params("unused", corpus__source="corpus.jsonl")
    with pytest.raises(CorpusError) as err:
        run_import_prepare(tmp_path, raw)
    assert where in str(err.value) and problem in str(err.value), str(err.value)


def test_bad_encoding_names_line(tmp_path):
    (tmp_path / "corpus.csv").write_bytes(b"review,sentiment\ngood,positive\ncaf\xe9 noir,negative\n")
    with pytest.raises(CorpusError, match=r"corpus.csv:3: not valid utf-8"):
        run_import_prepare(tmp_path, tiny_params("unused"))


def test_missing_source_file(tmp_path):
    with pytest.raises(CorpusError, match="nope.csv: corpus.source: file not found"):
        run_import_prepare(tmp_path, tiny_params("unused", corpus__source="nope.csv"))


def test_splits_are_stratified_disjoint_and_deduplicated(tmp_path):
    rows = synthetic_reviews(200)
    rows += rows[:10]  # exact duplicates
    rows += [(rows[20][0], "negative" if rows[20][1] == "positive" else "positive")]  # conflicting copy
    write_corpus_csv(tmp_path / "corpus.csv", rows)
    stats, layout = run_import_prepare(tmp_path, tiny_params("unused"))
    assert stats["duplicates_dropped"] == 10
    assert stats["conflicting_label_rows_dropped"] == 2
    texts = {}
    for split in ("train", "val", "test"):
        texts[split] = [json.loads(line)["text"] for line in layout.split(split).open()]
    all_texts = sum(texts.values(), [])
    assert len(all_texts) == len(set(all_texts)) == 199  # 200 distinct texts, one dropped for its conflict
    assert rows[20][0] not in all_texts
    assert abs(len(texts["test"]) - 199 * 0.2) <= 1
    for split in ("train", "val", "test"):  # stratified: both classes about half in every split
        counts = stats["splits"][split]
        assert abs(counts["positive"] - counts["negative"]) <= 1
    # same seed -> same split
    first = layout.split("test").read_text()
    prepare(parse_params(tiny_params("unused")), layout)
    assert layout.split("test").read_text() == first


def test_sentence_pairs_are_kept(tmp_path):
    lines = [json.dumps({"a": f"sentence {i}", "b": f"other {i}", "y": str(i % 2)}) for i in range(40)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    raw = tiny_params("unused", corpus__source="pairs.jsonl", corpus__text_column="a", corpus__label_column="y",
                      corpus__text_pair_column="b")
    _, layout = run_import_prepare(tmp_path, raw)
    row = json.loads(layout.split("train").open().readline())
    assert row["text_pair"].startswith("other")


def test_manifest_must_name_a_known_kind(tmp_path):
    (tmp_path / "src.yaml").write_text(yaml.safe_dump({"kind": "nope"}))
    with pytest.raises(CorpusError, match="not a corpus manifest"):
        run_import_prepare(tmp_path, tiny_params("unused", corpus__source="src.yaml"))
