"""Corpus validation (file:line errors), deduplication, and splits by content hash: stable as the corpus grows,
groups kept together, a fixed test file used as it is."""

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def split_texts(layout) -> dict[str, str]:
    """text -> the split it is in."""
    return {json.loads(line)["text"]: name for name in ("train", "val", "test") for line in layout.split(name).open()}


def test_splits_are_disjoint_deduplicated_and_near_their_shares(tmp_path):
    rows = synthetic_reviews(200)
    rows += rows[:10]  # exact duplicates
    rows += [(rows[20][0], "negative" if rows[20][1] == "positive" else "positive")]  # conflicting copy
    write_corpus_csv(tmp_path / "corpus.csv", rows)
    stats, layout = run_import_prepare(tmp_path, tiny_params("unused"))
    assert stats["duplicates_dropped"] == 10
    assert stats["conflicting_label_rows_dropped"] == 2
    texts = {name: [json.loads(line)["text"] for line in layout.split(name).open()] for name in ("train", "val", "test")}
    all_texts = sum(texts.values(), [])
    assert len(all_texts) == len(set(all_texts)) == 199  # 200 distinct texts, one dropped for its conflict
    assert rows[20][0] not in all_texts
    assert abs(len(texts["test"]) - 199 * 0.2) <= 17  # a hash share: within 3 standard errors of 20%
    shares = stats["label_shares"]
    assert shares["overall"] == {"negative": 0.5025, "positive": 0.4975}
    for name in ("train", "val", "test"):  # stratified in expectation only: reported, and near half
        assert abs(shares["shares"][name]["positive"] - 0.5) < 0.2
    # the same corpus -> the same split
    first = layout.split("test").read_text()
    prepare(parse_params(tiny_params("unused")), layout)
    assert layout.split("test").read_text() == first


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_appends_deletions_and_reorders_never_move_a_surviving_example(tmp_path_factory, data):
    """The property behind a fresh-data loop: a row's split is a function of its own content."""
    pool = synthetic_reviews(120, seed=3)
    # rows 0 and 1 (one of each label) stay, so that each version has two labels
    first = [0, 1] + data.draw(st.lists(st.sampled_from(range(2, 120)), min_size=20, max_size=80, unique=True),
                               label="v1")
    kept = [0, 1] + data.draw(st.lists(st.sampled_from(first[2:]), min_size=5, unique=True), label="survivors")
    added = data.draw(st.lists(st.sampled_from([i for i in range(120) if i not in first]), unique=True), label="new")
    second = data.draw(st.permutations(kept + added), label="v2 order")
    before, after = (tmp_path_factory.mktemp("v") for _ in range(2))
    for root, ids in ((before, first), (after, second)):
        write_corpus_csv(root / "corpus.csv", [pool[i] for i in ids])
    old = split_texts(run_import_prepare(before, tiny_params("unused"))[1])
    new = split_texts(run_import_prepare(after, tiny_params("unused"))[1])
    for i in kept:
        assert new[pool[i][0]] == old[pool[i][0]]


def test_share_report_warns_when_a_split_is_far_off(caplog):
    from types import SimpleNamespace

    from bertops.corpora.splitting import share_report

    def part(pos, neg):
        return [SimpleNamespace(label="pos")] * pos + [SimpleNamespace(label="neg")] * neg

    report = share_report({"train": part(400, 400), "val": part(50, 50), "test": part(90, 10)},
                          lambda ex: [ex.label], "corpus.csv")
    assert report["shares"]["test"] == {"neg": 0.1, "pos": 0.9}
    assert len(report["share_warnings"]) == 2 and "test has 90.0% label 'pos'" in report["share_warnings"][0]
    assert "corpus.csv: test has" in caplog.text
    assert not share_report({"train": part(400, 400), "val": part(50, 50), "test": part(52, 48)},
                            lambda ex: [ex.label], "c")["share_warnings"]


def test_group_column_keeps_a_group_in_one_split(tmp_path):
    lines = [json.dumps({"review": text, "sentiment": label, "doc": f"doc{i // 5}"})
             for i, (text, label) in enumerate(synthetic_reviews(200))]
    (tmp_path / "grouped.jsonl").write_text("\n".join(lines) + "\n")
    stats, layout = run_import_prepare(tmp_path, tiny_params("unused", corpus__source="grouped.jsonl",
                                                             corpus__group_column="doc"))
    where = split_texts(layout)
    groups = {}
    for line in lines:
        row = json.loads(line)
        groups.setdefault(row["doc"], set()).add(where[row["review"]])
    assert all(len(splits) == 1 for splits in groups.values())  # 40 groups of 5, never split
    assert {s for splits in groups.values() for s in splits} == {"train", "val", "test"}


def test_a_fixed_test_file_is_the_test_split_and_kept_out_of_training(tmp_path):
    rows = synthetic_reviews(160)
    write_corpus_csv(tmp_path / "corpus.csv", rows)
    golden = rows[:10] + [("a brand new great movie", "positive")]
    write_corpus_csv(tmp_path / "golden.csv", golden)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"import": {"cmd": "x", "deps": ["corpus.csv"]}}}))
    params = tiny_params("unused", corpus__test_source="golden.csv")
    with pytest.raises(CorpusError, match="add `- golden.csv` to stages.import.deps"):
        run_import_prepare(tmp_path, params)  # DVC would not rerun import when the golden file changes
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"import": {"deps": ["corpus.csv", "golden.csv"]}}}))
    stats, layout = run_import_prepare(tmp_path, params)
    where = split_texts(layout)
    assert [t for t, s in where.items() if s == "test"] == [t for t, _ in golden]  # as it is, in its order
    assert stats["rows_in_test_source_dropped"] == 10
    assert sum(1 for s in where.values() if s != "test") == 150


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
