"""The result of ``python -m moefusion.kernels.check``: rows, steps, the time budget, Markdown and JSON."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

TARGET_MS = {"paper": 2.5, "edge": 0.5}  # batch 1, fp16, H100, model only


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


@dataclass
class Report:
    env: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    ok: bool = True
    row_errors: int = 0

    def step(self, name: str, status: str, seconds: float, detail: str = ""):
        self.steps.append({"step": name, "status": status, "seconds": round(seconds, 1), "detail": detail})
        if status == "FAIL":
            self.ok = False
        print(f"[{status}] {name} ({seconds:.1f} s){': ' + detail if detail else ''}", flush=True)

    def markdown(self) -> str:
        e = self.env
        lines = [
            "# moefusion kernels check",
            "",
            f"GPU: **{e.get('gpu', 'none')}** (sm_{e.get('cc', '?')}), driver CUDA {e.get('cuda_driver', '?')}, "
            f"torch {e.get('torch')} (CUDA {e.get('torch_cuda')}), Python {e.get('python')}, "
            f"library: {e.get('library', '-')}",
            f"Command: `{e.get('command')}`; started {e.get('started')}; total {e.get('total_s', '?')} s",
            "",
            "| step | status | s | detail |",
            "| --- | --- | --- | --- |",
        ]
        for s in self.steps:
            lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} | {s['detail']} |")
        lines += ["", "| section | what | config | batch | PyTorch ms | ours ms | speed-up | note | GPU |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            sp = f"{r.speedup:.2f}x" if r.speedup else ""
            lines.append(f"| {r.section} | {r.name} | {r.config} | {r.batch} | {fmt_ms(r.torch_ms)} | "
                         f"{fmt_ms(r.ours_ms)} | {sp} | {r.note} | {r.gpu} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        rows = [dict(asdict(r), speedup=r.speedup) for r in self.rows]
        return json.dumps({"env": self.env, "steps": self.steps, "rows": rows, "ok": self.ok}, indent=2)


def fmt_ms(v):
    return "" if v is None else f"{v:.3f}"


class Budget:
    """Seconds left for the whole check; ``reserve`` keeps time back for the whole-model rows."""

    def __init__(self, seconds: float):
        self.t0 = time.monotonic()
        self.seconds = seconds
        self.reserved = 0.0

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def left_before_reserve(self) -> float:
        """What earlier steps (GPU tests, kernel benchmarks) may spend without eating the reserved time."""
        return self.left() - self.reserved

    def elapsed(self) -> float:
        return time.monotonic() - self.t0
