"""Each pair's measurement kept on disk beside the outputs, so that an interrupted measurement
continues where it stopped.

One JSON line per pair, appended and flushed as soon as the pair is measured (a line cut short
by an interruption is ignored). A line serves again only for the same stylized file (its name,
size and modification time), the same content and style files and the same metric weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .protocol import PairMeasurement


class PairLog:
    """The measurements of ``path`` made with the metric weights of ``metrics_fingerprint``."""

    def __init__(self, path: str | os.PathLike, metrics_fingerprint: str):
        self.path, self.fingerprint = Path(path), metrics_fingerprint
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line an interruption cut short
                if record.get("metrics") == self.fingerprint:
                    self.records[record["key"]] = record

    @staticmethod
    def key(stylized: Path, content: Path, style: Path) -> str:
        stat = stylized.stat()
        return json.dumps([stylized.name, stat.st_size, stat.st_mtime_ns, content.name, style.name])

    def get(self, stylized: Path, content: Path, style: Path) -> PairMeasurement | None:
        record = self.records.get(self.key(stylized, content, style))
        return PairMeasurement.from_record(record) if record is not None else None

    def add(self, stylized: Path, content: Path, style: Path, measurement: PairMeasurement) -> None:
        record = {"key": self.key(stylized, content, style), "metrics": self.fingerprint,
                  **measurement.as_record()}
        self.records[record["key"]] = record
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
