"""Texts longer than model.max_length: task.long_text truncate keeps the first tokens, head_tail the first quarter
and the last three quarters (Sun et al. 2019); the same encoding in training, evaluation and the served model;
model.max_length checked against the encoder's position embeddings."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bertops.config import parse_params
from bertops.errors import BertopsError, ParamsError
from bertops.inference import encode_texts, predict_proba
from bertops.modeling import check_max_length
from bertops.tasks import get_task
from bertops.tasks.sequence_classification import encode_sequences

from conftest import FILLER, NEGATIVE, POSITIVE, tiny_params


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_head_tail_keeps_both_ends(tokenizer):
    vocab = [*POSITIVE, *NEGATIVE, *FILLER]
    text = " ".join(vocab[i % len(vocab)] for i in range(100))  # one sub-token per word in the tiny vocabulary
    enc = encode_texts(tokenizer, [text, "the movie"], max_length=32, long_text="head_tail")
    long, short = enc["input_ids"]
    assert len(long) == 32 and long[0] == tokenizer.cls_token_id and long[-1] == tokenizer.sep_token_id
    pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
    head = int(30 * 0.25)
    assert long[1:-1] == pieces[:head] + pieces[-(30 - head):]
    assert short == tokenizer("the movie")["input_ids"]  # a text that fits is left as it is
    truncated = encode_texts(tokenizer, [text], max_length=32)["input_ids"][0]
    assert truncated == tokenizer(text, truncation=True, max_length=32)["input_ids"]
    assert enc["attention_mask"][0] == [1] * 32 and set(enc["token_type_ids"][0]) == {0}


def test_training_and_serving_encode_alike(tokenizer, tiny_model_dir):
    """What the train stage's features hold is what the served model feeds the encoder for the same text."""
    text = " ".join(FILLER * 12)
    params = parse_params(tiny_params(tiny_model_dir, task__long_text="head_tail"))
    family = get_task("sequence_classification")
    features = family.encode([{"text": text, "label": "a"}], tokenizer, ["a", "b"], params)
    assert features[0]["input_ids"] == encode_texts(tokenizer, [text], max_length=32, long_text="head_tail")["input_ids"][0]
    assert features[0]["input_ids"] != encode_sequences([{"text": text, "label": "a"}], tokenizer, ["a", "b"], 32)[0]["input_ids"]
    config = family.serve_config(params)
    assert config["long_text"] == "head_tail" and config["max_length"] == 32
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).eval()
    served = family.serve(model, tokenizer, [{"text": text}], config)
    expected = predict_proba(model, tokenizer, [text], max_length=32, long_text="head_tail")[0]
    cut = predict_proba(model, tokenizer, [text], max_length=32)[0]
    assert served["probabilities"][0] == pytest.approx(dict(zip(["LABEL_0", "LABEL_1"], expected.tolist())), abs=1e-6)
    assert abs(expected - cut).max() > 1e-6  # the policy changed what the model saw


def test_a_bad_policy_names_the_field():
    with pytest.raises(ParamsError, match=r"task.long_text.*'truncate' or 'head_tail'"):
        parse_params(tiny_params("m", task__long_text="middle"))


def test_max_length_beyond_the_position_embeddings_is_refused(tiny_model_dir):
    assert check_max_length(str(tiny_model_dir), None, 64) == 64
    with pytest.raises(BertopsError, match=r"model.max_length: 128 is more than .* \(64\)"):
        check_max_length(str(tiny_model_dir), None, 128)
