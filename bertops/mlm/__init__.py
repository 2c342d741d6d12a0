"""Masked-LM continued pretraining (DAPT/TAPT) and cloze fill-mask."""
