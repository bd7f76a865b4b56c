"""log.csv of a training run (one row per logged step, flushed at once; cut to the resumed step), and TensorBoard
when it is installed."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

LOG = "log.csv"
FIRST_COLUMNS = ["step", "epoch", "loss", "lr", "images_per_s"]


class RunLog:
    """log.csv (one row per logged step, flushed at once) and TensorBoard when it is installed; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path, self.enabled = Path(run_dir) / LOG, enabled
        self.file: Any = None
        self.writer: csv.DictWriter | None = None
        self.tb: Any = None

    def start(self, step: int) -> None:
        """Keep the rows up to `step` (the checkpoint resumed from; none on a fresh start) and append after them."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header, rows = _read_log(self.path) if step > 0 else ([], [])
        tmp = self.path.with_name(f".{LOG}.tmp")
        with open(tmp, "w", newline="") as f:  # rewritten whole and renamed: a kill never leaves half a log
            if header:
                csv.DictWriter(f, header).writeheader()
                csv.DictWriter(f, header).writerows(r for r in rows if r["step"].isdigit() and int(r["step"]) <= step)
        os.replace(tmp, self.path)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, header, extrasaction="ignore", restval="") if header else None
        try:  # optional: only when tensorboard is installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        """Append one row; the header is fixed by the first row ever written to the file."""
        if not self.enabled or self.file is None:
            return
        if self.writer is None:
            header = FIRST_COLUMNS + sorted(k for k in row if k not in FIRST_COLUMNS)
            self.writer = csv.DictWriter(self.file, header, extrasaction="ignore", restval="")
            self.writer.writeheader()
        self.writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
        self.file.flush()
        for k, v in row.items() if self.tb is not None else ():
            if k not in ("step", "epoch"):
                self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        """Close the files."""
        for f in (self.file, self.tb):
            if f is not None:
                f.close()
        self.file = self.tb = None


def _read_log(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if None not in r and None not in r.values()]  # drops a row cut short by a kill
        return list(reader.fieldnames or []), rows
