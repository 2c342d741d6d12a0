"""Masked-LM continued pretraining: BERT's 15% / 80-10-10 masking by token, whole word and span; fixed masks for
held-out perplexity; the pipeline on a tiny model, registered as fill-mask; the cloze claim (a made-up name in a
few template sentences becomes the top filler of its context)."""

import json
import random
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from bertops.config import parse_params
from bertops.errors import ParamsError
from bertops.layout import Layout
from bertops.mlm.masking import IGNORE_INDEX, MaskingCollator, encode_texts, mask_example, select_positions
from bertops.modeling import load_tokenizer
from conftest import FILLER, POSITIVE, tiny_params, write_tiny_bert

NAME = "zorblax"  # the made-up name the cloze test teaches: not in the vocabulary, added by task.new_tokens


@pytest.fixture(scope="module")
def tiny_mlm_model(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-mlm-bert"), [*POSITIVE, *FILLER, "directed", "by"])


def test_token_masking_rates():
    rng = random.Random(0)
    n, selected, kinds = 2000, 0, Counter()
    ids = list(range(100, 100 + n))
    for _ in range(20):
        masked, labels = mask_example(ids, list(range(n)), [0] * n, rng, probability=0.15, masking="token",
                                      mask_id=4, vocab_size=5000)
        for original, new, label in zip(ids, masked, labels):
            if label == IGNORE_INDEX:
                assert new == original
                continue
            selected += 1
            kinds["mask" if new == 4 else "kept" if new == original else "random"] += 1
    assert selected == 20 * 300  # exactly round(15% of the tokens) per sequence
    assert kinds["mask"] / selected == pytest.approx(0.8, abs=0.02)
    assert kinds["random"] / selected == pytest.approx(0.1, abs=0.015)
    assert kinds["kept"] / selected == pytest.approx(0.1, abs=0.015)


def test_special_tokens_never_selected_and_whole_words_stay_whole():
    rng = random.Random(1)
    # [CLS] w0 w0 w1 w2 w2 w2 ... [SEP]: words of 1-3 sub-tokens
    word_ids, w = [None], 0
    while len(word_ids) < 400:
        word_ids += [w] * (w % 3 + 1)
        w += 1
    word_ids.append(None)
    special = [1 if x is None else 0 for x in word_ids]
    for _ in range(50):
        chosen = set(select_positions(word_ids, special, rng, probability=0.15, masking="whole_word"))
        assert not any(special[i] for i in chosen)
        for word in {word_ids[i] for i in chosen}:
            assert {i for i, x in enumerate(word_ids) if x == word} <= chosen


def test_span_masking_selects_contiguous_word_spans():
    rng = random.Random(2)
    word_ids = [None, *range(300), None]
    special = [1, *[0] * 300, 1]
    runs = []
    for _ in range(100):
        chosen = select_positions(word_ids, special, rng, probability=0.15, masking="span", span_mean=3.0)
        assert len(chosen) == 45
        run = 1
        for a, b in zip(chosen, chosen[1:]):
            if b == a + 1:
                run += 1
            else:
                runs.append(run)
                run = 1
        runs.append(run)
    assert 2.0 < sum(runs) / len(runs) < 4.5  # spans, not scattered tokens (token masking gives ~1.2)


def test_fixed_masks_repeat_and_training_masks_change(tiny_mlm_model):
    tokenizer = load_tokenizer(str(tiny_mlm_model))
    features = encode_texts([{"text": " ".join(FILLER)} for _ in range(8)], tokenizer, max_length=32)
    options = dict(probability=0.3, masking="token", replace_prob=0.8, random_prob=0.1, span_mean=3.0)
    fixed = MaskingCollator(tokenizer, seed=0, fixed=True, **options)
    assert fixed(features)["labels"].tolist() == fixed(features)["labels"].tolist()
    dynamic = MaskingCollator(tokenizer, seed=0, **options)
    assert dynamic(features)["labels"].tolist() != dynamic(features)["labels"].tolist()


def test_replacement_shares_are_validated(tiny_mlm_model):
    raw = tiny_params(tiny_mlm_model, task__type="masked_lm", task__metric="perplexity")
    raw["task"].update(mask_replace_prob=0.95, random_replace_prob=0.1)
    with pytest.raises(ParamsError, match="mask_replace_prob \\+ random_replace_prob must be at most 1"):
        parse_params(raw)
    raw["task"].update(mask_replace_prob=0.8, new_tokens=[NAME, "two words"])
    with pytest.raises(ParamsError, match="task.*new_tokens\\[1\\]: 'two words' is not one word"):
        parse_params(raw)


def cloze_corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 3 == 0:  # template sentences with the new name
            lines.append(f"{i} " + rng.choice(["the film was directed by", "the movie was directed by",
                                               "the story was directed by"]) + f" {NAME}")
        else:  # "was" is followed by a positive word everywhere else
            lines.append(f"{i} {rng.choice(['the movie', 'the film', 'the plot'])} was {rng.choice(POSITIVE)}")
    return lines


@pytest.mark.timeout(900)
def test_mlm_pipeline_teaches_a_new_name_and_registers_fill_mask(tmp_path, tiny_mlm_model):
    from bertops.stages.evaluate import evaluate
    from bertops.stages.import_corpus import import_corpus
    from bertops.stages.prepare import prepare
    from bertops.stages.register import register
    from bertops.stages.train import train

    root = tmp_path
    (root / "domain.txt").write_text("\n".join(cloze_corpus(400)) + "\n\n")
    raw = tiny_params(tiny_mlm_model, corpus__source="domain.txt", task__type="masked_lm",
                      task__metric="perplexity", registry__model_name="tiny-mlm")
    raw["task"].update(masking="whole_word", new_tokens=[NAME])
    raw["train"].update(epochs=40, early_stopping_patience=None, lr=5e-3)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params, layout = parse_params(raw), Layout(root)
    import_corpus(params, layout)
    assert prepare(params, layout)["texts"] == 400
    vocab_size = len(load_tokenizer(str(tiny_mlm_model)))
    assert load_tokenizer(str(tiny_mlm_model)).tokenize(NAME) == ["[UNK]"]
    train(params, layout)
    saved = load_tokenizer(str(layout.model_dir))
    assert saved.tokenize(f"directed by {NAME.capitalize()}") == ["directed", "by", NAME]
    assert len(saved) == vocab_size + 1
    curve = [line.split(",") for line in (root / "reports" / "plots" / "val_metrics.csv").read_text().splitlines()]
    assert curve[0] == ["epoch", "step", "val_loss", "val_perplexity", "val_accuracy"]
    perplexities = [float(row[3]) for row in curve[1:]]
    assert min(perplexities) < perplexities[0] / 2
    metrics = evaluate(params, layout)
    assert metrics["perplexity"] < vocab_size / 5, metrics
    assert register(params, layout)["decision"] == "champion"

    done = subprocess.run([sys.executable, "-m", "bertops.cli", "fill-mask", "--json", "--top-k", "3",
                           # the tiny model leans on absolute positions: ask in the corpus's own shape
                           "5 the film was directed by [MASK]", "5 the plot was [MASK]"],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    taught, unrelated = [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]
    assert taught["fillers"][0]["token"] == NAME
    assert unrelated["fillers"][0]["token"] in POSITIVE

    # the scoring server: the fillers transformers' own fill-mask pipeline gives for the checkpoint, top_k as a
    # request param, a text 4x max_length with its mask at the end, and a text without a [MASK] refused
    import serving
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(layout.model_dir), tokenizer=str(layout.model_dir))
    texts = ["5 the film was directed by [MASK]", "7 the movie was [MASK]"]
    with serving.serving_project(root, "tiny-mlm") as (url, model_uri, uri):
        out = serving.served(url, [{"text": t} for t in texts], params={"top_k": 4})
        for text, row in zip(texts, out):
            expected = fill(text, top_k=4)
            assert [f["token"] for f in row["fillers"]] == [e["token_str"].strip() for e in expected]
            assert all(abs(f["probability"] - e["score"]) < 1e-4 for f, e in zip(row["fillers"], expected))
        long = " ".join([f"the movie was {POSITIVE[0]}"] * params.model.max_length) + " the film was [MASK]"
        assert len(serving.served(url, [{"text": long}])[0]["fillers"]) == 5
        serving.assert_bad_request(url, {"dataframe_records": [{"text": "the plot was good"}]},
                                   "row 0: put exactly one [MASK] in the text (found 0)")
    serving.assert_requirements_cover_imports(model_uri, uri, [{"text": texts[0]}])


def test_masked_positions_only_loss_equals_the_models_own(tiny_mlm_model):
    """The training step scores only the masked positions; its loss and top-1 are the model's own full forward's."""
    import torch
    from transformers import AutoModelForMaskedLM

    from bertops.config import TrainParams
    from bertops.training.heads.masked_lm import MaskedLM

    tokenizer = load_tokenizer(str(tiny_mlm_model))
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_mlm_model)).eval()
    module = MaskedLM(model, set(), TrainParams())
    model.eval()
    texts = [{"text": f"the film was {w} and directed by {NAME}"} for w in POSITIVE[:6]]
    collate = MaskingCollator(tokenizer, seed=0, fixed=True, probability=0.3, masking="token", replace_prob=0.8,
                              random_prob=0.1, span_mean=3.0)
    batch = collate(encode_texts(texts, tokenizer, 32))
    with torch.no_grad():
        full = model(**batch)
        loss, logits, labels = module.masked_outputs(batch)
    masked = batch["labels"] != IGNORE_INDEX
    assert labels.numel() == int(masked.sum()) > 0
    assert loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert torch.equal(logits.argmax(-1), full.logits[masked].argmax(-1))
