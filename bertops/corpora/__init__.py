"""Corpora: bringing a source into data/raw (import), reading and validating rows (readers)."""
