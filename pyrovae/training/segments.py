"""What a long job cost, one segment per process: a run trained over hours is stopped and
resumed many times, and each start of ``fit`` (or of an evaluation) opens a segment whose wall
time and CPU time are kept on disk (``segments.jsonl``, rewritten atomically at each checkpoint),
so the total CPU hours of a result are read back, not estimated."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import torch

from pyrovae.training import checkpoint as ckpt_io


class Segments:
    """The segments file at ``path``; :meth:`open` starts this process's segment (its number is
    one past the file's last), :meth:`update` records its progress (``fields``: the step or
    chunk reached) with the wall and CPU seconds since it opened. CPU seconds are this process's
    (all its threads; ``time.process_time``): under ``torchrun``, rank 0's alone."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.current: dict | None = None
        self._earlier: list[dict] = []  #: the segments before this process's, read once
        self._wall = self._cpu = 0.0

    def open(self, device: torch.device | str, **fields) -> dict:
        self._earlier = done = read_segments(self.path)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self.current = {
            "segment": len(done) + 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "host": socket.gethostname(),
            "device": str(device),
            "threads": torch.get_num_threads(),
            **fields,
        }
        self._write(done)
        return self.current

    def update(self, **fields) -> None:
        if self.current is None:
            return
        self.current.update(fields)
        self.current["threads"] = torch.get_num_threads()
        self.current["wall_s"] = round(time.perf_counter() - self._wall, 3)
        self.current["cpu_s"] = round(time.process_time() - self._cpu, 3)
        self.current["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write(self._earlier)

    def _write(self, earlier: list[dict]) -> None:
        rows = [*earlier, dict(self.current)]
        ckpt_io.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))


def read_segments(path: str | Path) -> list[dict]:
    """The segments recorded at ``path`` (none when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def totals(segments: list[dict]) -> dict:
    """{segments, wall_h, cpu_h}: their count and summed wall and CPU hours."""
    return {
        "segments": len(segments),
        "wall_h": sum(s.get("wall_s", 0.0) for s in segments) / 3600,
        "cpu_h": sum(s.get("cpu_s", 0.0) for s in segments) / 3600,
    }
