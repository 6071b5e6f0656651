"""The results of ``python -m moefusion.kernels.check``: measured rows, one JSON line per finished step,
the step's time budget, and the readable summary (Markdown).

Files in the output folder (``--out``), each written as soon as its content exists, so that a run
killed part-way leaves every finished step on disk:

- ``results.jsonl``: one JSON object per finished step, appended, flushed and fsync'ed when the step
  ends (``step``, ``index``, ``status``, ``seconds``, ``budget_s``, ``detail``, ``rows``, ``data``,
  ``tail`` for a step that did not end ``ok``); a last ``{"step": "end", ...}`` line when the run ended
  by itself;
- ``log.txt``: every step's own output, appended while it runs;
- ``summary.md``: the step table and the measured rows, rewritten (atomically) after every step.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..files import atomic_write_text

TARGET_MS = {"paper": 2.5, "edge": 0.5}  # batch 1, fp16, H100, model only

RESULTS = "results.jsonl"
LOG = "log.txt"
SUMMARY = "summary.md"

# a step's status: "ok" and "skipped" are not failures; "timeout" and "killed" keep the step's partial rows
STATUSES = ("ok", "FAIL", "timeout", "skipped", "killed", "error")


@dataclass
class Row:
    section: str
    name: str
    config: str
    batch: int = 1
    torch_ms: float | None = None
    ours_ms: float | None = None
    note: str = ""
    gpu: str = ""

    @property
    def speedup(self) -> float | None:
        if self.torch_ms and self.ours_ms:
            return self.torch_ms / self.ours_ms
        return None

    def to_dict(self) -> dict:
        return dict(asdict(self), speedup=self.speedup)


def fmt_ms(v):
    return "" if v is None else f"{v:.3f}"


class Budget:
    """Seconds left for one step, against a wall-clock deadline (the step runs in its own process)."""

    def __init__(self, seconds: float | None = None, deadline: float | None = None):
        self.t0 = time.monotonic()
        self.deadline = deadline if deadline is not None else time.time() + (seconds or 0.0)

    def left(self) -> float:
        return self.deadline - time.time()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


class StepSink:
    """What a step's process reports to the check: each measured row as it is measured, then the result.

    Lines in ``path`` (JSON): ``{"row": {...}}`` per row, then one ``{"result": {...}}``. Each line is
    flushed at once: a step stopped at its budget keeps the rows it measured.
    """

    def __init__(self, path: str | os.PathLike | None, env: dict | None = None):
        self.path = Path(path) if path else None
        self.env = env or {}
        self.rows: list[Row] = []
        self.row_errors = 0

    def _write(self, obj: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self._write({"row": row.to_dict()})

    def result(self, status: str, detail: str = "", data: dict | None = None) -> None:
        assert status in STATUSES, status
        self._write({"result": {"status": status, "detail": detail, "data": data or {}}})


def read_step_file(path: str | os.PathLike) -> tuple[list[dict], dict | None]:
    """(rows, result or None) from a StepSink file; a torn last line (the step was killed) is ignored."""
    rows, result = [], None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return rows, None
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if "row" in obj:
            rows.append(obj["row"])
        elif "result" in obj:
            result = obj["result"]
    return rows, result


class Results:
    """The output folder: results.jsonl (a line per finished step), log.txt, summary.md."""

    def __init__(self, out: str | os.PathLike, header: dict):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = self.out / RESULTS
        self.log = self.out / LOG
        self.summary = self.out / SUMMARY
        for p in (self.results, self.log):
            p.write_text("")  # a fresh run: nothing from an earlier one
        self.header = header
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        """Append one step's record and make it durable before the next step starts."""
        self.records.append(record)
        with open(self.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.write_summary()

    def log_line(self, text: str) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def write_summary(self) -> None:
        atomic_write_text(self.summary, summary_markdown(self.header, self.records))


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def summary_markdown(header: dict, records: list[dict], steps_last: bool = False) -> str:
    """The header, the step table and the measured rows; ``steps_last``: the rows before the step table (for
    a console whose last lines are what is kept, e.g. the device tool's output tail)."""
    env = next((r.get("data") or {} for r in records if r.get("step") == "env"), {})
    end = next((r for r in records if r.get("step") == "end"), None)
    gpu = env.get("gpu") or ("none (no CUDA GPU)" if env.get("cuda_available") is False else "?")
    head = [
        "# moefusion GPU check",
        "",
        f"GPU: **{gpu}**"
        + (f" (sm_{env['cc']}, {env.get('sms')} SMs, {env.get('memory_gib')} GiB)" if env.get("cc") else "")
        + f", driver {env.get('cuda_driver') or '-'}, torch {env.get('torch', '?')} "
        f"(CUDA {env.get('torch_cuda', '?')}), Python {env.get('python', '?')}, nvcc {env.get('nvcc', '?')}",
        f"Command: `{header.get('command', '')}`; started {header.get('started', '')}; "
        f"total budget {header.get('budget_s', '?')} s; "
        + (f"finished in {end['seconds']} s: {end['detail']}" if end else
           f"{len([r for r in records if r.get('step') != 'end'])} of {header.get('steps', '?')} steps written "
           "(still running, or stopped)")
        + (" **(dry run: no GPU, CPU parts only; numbers meaningless)**" if header.get("dry_run") else ""),
    ]
    lines = [
        "",
        "| # | step | status | s (budget) | CPU s | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        if r.get("step") == "end":
            continue
        cpu = "" if r.get("cpu_s") is None else r["cpu_s"]
        lines.append(f"| {r.get('index', '')} | {r['step']} | {r['status']} | {r.get('seconds', '')} "
                     f"({r.get('budget_s', '')}) | {cpu} | {_cell(r.get('detail', ''))[:400]} |")
    table = []
    rows = [(r["step"], row) for r in records for row in r.get("rows") or []]
    if rows:
        table += ["", "| step | section | what | config | batch | PyTorch ms | ours ms | speed-up | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for step, row in rows:
            sp = f"{row['speedup']:.2f}x" if row.get("speedup") else ""
            table.append(f"| {step} | {row['section']} | {_cell(row['name'])} | {_cell(row['config'])} | "
                         f"{row['batch']} | {fmt_ms(row.get('torch_ms'))} | {fmt_ms(row.get('ours_ms'))} | {sp} | "
                         f"{_cell(row.get('note', ''))} |")
    return "\n".join(head + (table + lines if steps_last else lines + table)) + "\n"
