"""Extractive question answering: SQuAD-format reading, windowed encoding, span decoding, EM/F1."""
