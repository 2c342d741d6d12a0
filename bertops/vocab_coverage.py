"""How much of a corpus the tokenizer can represent: words and characters that come out as [UNK]
(Chinese text with an English vocabulary, emoji, rare scripts)."""

from __future__ import annotations

from collections import Counter


def vocab_coverage(tokenizer, sentences: list[list[str]], top: int = 30) -> dict:
    words = Counter(word for sentence in sentences for word in sentence)
    chars = Counter()
    for word, count in words.items():
        for char in word:
            chars[char] += count
    unk = tokenizer.unk_token_id

    def unknown(items: list[str]) -> set[str]:
        if unk is None or not items:
            return set()
        ids = tokenizer(items, add_special_tokens=False)["input_ids"]
        return {item for item, pieces in zip(items, ids) if unk in pieces}

    unknown_words = unknown(list(words))
    unknown_chars = unknown([c for c in chars if not c.isspace()])
    total_words = sum(words.values())
    unk_words = sum(words[w] for w in unknown_words)
    return {
        "words": total_words,
        "words_with_unk": unk_words,
        "unk_word_ratio": round(unk_words / total_words, 6) if total_words else 0.0,
        "uncovered_characters": dict(sorted(((c, chars[c]) for c in unknown_chars), key=lambda kv: -kv[1])),
        "top_unk_words": dict(Counter({w: words[w] for w in unknown_words}).most_common(top)),
    }
