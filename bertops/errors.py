"""User-facing errors: each carries a message that names the file and line, or the params field."""

from __future__ import annotations


class BertopsError(Exception):
    """An error caused by the user's input (params, corpus, model path); printed without a traceback."""


class ParamsError(BertopsError):
    pass


class CorpusError(BertopsError):
    def __init__(self, path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")
