"""Where each stage reads and writes, relative to the project root (dvc.yaml names the same paths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertops.errors import CorpusError


@dataclass(frozen=True)
class Layout:
    root: Path
    # A study run keeps its model and reports under its own root but reads the project's prepared data and logs
    # to the project's tracking store: `project` is then that project's root.
    project: Path | None = None
    # scoring a registered version (the champion on today's split): its downloaded checkpoint, not models/best
    model_path: Path | None = None

    @property
    def project_root(self) -> Path:
        return self.project or self.root

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def raw_dir(self) -> Path:
        return self.project_root / "data" / "raw"

    @property
    def prepared_dir(self) -> Path:
        return self.project_root / "data" / "prepared"

    def split(self, name: str) -> Path:
        return self.prepared_dir / f"{name}.jsonl"

    @property
    def labels_file(self) -> Path:
        return self.prepared_dir / "labels.json"

    @property
    def vocab_coverage_file(self) -> Path:
        """Token classification: words and characters the tokenizer maps to [UNK] (written by prepare)."""
        return self.prepared_dir / "vocab_coverage.json"

    @property
    def model_dir(self) -> Path:
        return self.model_path or self.root / "models" / "best"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def train_run_file(self) -> Path:
        """The MLflow run of the training stage (evaluate and register log into the same run)."""
        return self.reports_dir / "train_run.json"

    @property
    def history_file(self) -> Path:
        return self.reports_dir / "history.csv"

    @property
    def metrics_file(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def predictions_file(self) -> Path:
        return self.reports_dir / "test_predictions.jsonl"

    @property
    def registration_file(self) -> Path:
        return self.reports_dir / "registration.json"

    @property
    def work_dir(self) -> Path:
        """Not a DVC output (DVC deletes outputs before a stage runs): interrupted-run checkpoints live here."""
        return self.root / ".bertops"

    def raw_test(self) -> Path | None:
        """The user's fixed test file (corpus.test_source) as import copied it, or None."""
        files = sorted(p for p in self.raw_dir.glob("test.*") if p.is_file())
        return files[0] if files else None

    def raw_corpus(self) -> Path:
        files = sorted(self.raw_dir.glob("corpus.*"))  # a file, or a folder corpus's directory (corpus.folder)
        if len(files) != 1:
            raise CorpusError(self.raw_dir, None, f"expected exactly one corpus.* file, found {len(files)}: "
                                                  "run the import stage first")
        return files[0]
