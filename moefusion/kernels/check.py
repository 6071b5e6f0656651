"""GPU check: build, test and time the CUDA kernels and the whole model on one GPU, in one short run.

    python -m moefusion.kernels.check --out build/gpu-check              # every step, 480 s in all
    python -m moefusion.kernels.check --out $OUT/gpu_check --budget 480  # on a lent GPU machine
    python -m moefusion.kernels.check --dry-run --out /tmp/check         # CPU: the same script, tiny sizes
    python -m moefusion.kernels.check --list                             # the steps, their budgets

The steps run in order of value (``--list``): the environment, the build, every kernel against the
PyTorch reference, whole-model timings of both presets and both dispatches, batch 8, kernel timings,
ONNX Runtime's CUDA provider and TensorRT where installed, torch.compile, the remaining GPU tests and
compute-sanitizer last. Each step runs in its own process group with a time budget (a cap; what a
step does not use goes to the later ones); at its budget the step is killed and recorded "timeout"
with the rows it measured and the end of its output, and the run goes on. The run as a whole stops
starting steps when ``--budget`` is spent (those are recorded "skipped"). A step that cannot run here
(no GPU, no CUDA provider, no TensorRT, no compute-sanitizer) is recorded "skipped" with the reason.

Written to ``--out`` (a folder) as the run goes: ``results.jsonl`` (one JSON line per finished step,
flushed and fsync'ed before the next starts), ``log.txt`` (every step's own output) and ``summary.md``
(rewritten after each step); killing the run part-way leaves every finished step on disk.

Without a GPU (or with ``--dry-run``) every step runs its CPU part on tiny sizes (build, models,
kernel timings) or reports "skipped" at once: a test of this script in CI. Exit status 0 when no step
failed or ran out of time, 1 otherwise, 2 for a bad argument.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError, cli_entry
from .build import ROOT
from .check_report import Budget, Results, StepSink, read_step_file, summary_markdown
from .check_steps import STEP_NAMES, STEPS, Context, Step, run_step

DEFAULT_BUDGET_S = 480.0  # one 10-minute call on a lent GPU machine, with room for the start and the transfers
DEFAULT_OUT = ROOT / "build" / "gpu-check"
TAIL_CHARS = 3000  # of a step's output, kept in its record when it did not end "ok"
# the most a step's own soft deadline falls before its hard one (the step stops measuring and reports)
MARGIN_S = 10.0
FAILED = ("FAIL", "timeout", "error", "killed")

_LIBC = None
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    except OSError:
        _LIBC = None


class _Stopped(Exception):
    """The check was asked to stop (SIGTERM, SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _step_preexec(parent: int):
    """In a step's process before it starts: its own process group (killed as a whole at its budget), and
    SIGTERM when the check dies, even by SIGKILL (the step then kills its group: pytest, cmake, nvcc)."""
    def preexec():
        os.setpgid(0, 0)
        if _LIBC is not None:
            _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the check died before prctl
            os._exit(1)

    return preexec


def _children_cpu() -> float:
    """CPU seconds of the finished child processes (a step's wall time far above it: a busy machine)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Runner:
    """Runs the steps one by one in child processes, each bounded in time, and writes their records."""

    def __init__(self, args, steps: list[Step], budgets: dict[str, float]):
        self.args = args
        self.steps = steps
        self.budgets = budgets
        self.dry = bool(args.dry_run)
        self.dry_reason = "--dry-run" if self.dry else ""
        self.t0 = time.monotonic()
        self.total = args.budget
        self.child: subprocess.Popen | None = None
        self.env: dict = {}
        self.library: str | None = None
        self.build_failed = False
        self.tmp = Path(tempfile.mkdtemp(prefix="moefusion-check-"))
        self.results = Results(args.out, {
            "command": " ".join(["python -m moefusion.kernels.check", *map(shlex.quote, args.argv)]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "budget_s": self.total,
            "dry_run": self.dry,
            "steps": len(steps),
        })

    def left(self) -> float:
        return self.total - (time.monotonic() - self.t0)

    def _child_env(self) -> dict:
        env = os.environ.copy()
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["MOEFUSION_CHECK_ENV"] = json.dumps({"gpu": self.env.get("gpu") if not self.dry else "cpu (dry run)"})
        if self.library:
            env["MOEFUSION_KERNELS_LIB"] = self.library
        return env

    def record(self, step: Step, index: int, status: str, seconds: float, budget: float, detail: str,
               rows=(), data=None, tail: str = "", cpu_s: float | None = None) -> dict:
        rec = {"step": step.name, "index": index, "of": len(self.steps), "status": status,
               "seconds": round(seconds, 1), "budget_s": round(budget, 1), "cpu_s": None if cpu_s is None else
               round(cpu_s, 1), "detail": detail,
               "title": step.title, "dry_run": self.dry, "rows": list(rows), "data": data or {},
               "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        if tail and status not in ("ok", "skipped"):
            rec["tail"] = tail
        self.results.write(rec)
        cpu = f", CPU {cpu_s:.1f} s" if cpu_s is not None else ""
        line = f"[{status}] {index}/{len(self.steps)} {step.name} ({seconds:.1f} s of {budget:.0f}{cpu}): {detail}"
        print(line[:600], flush=True)
        return rec

    def run_child(self, step: Step, index: int, budget: float) -> dict:
        step_file = self.tmp / f"{index:02d}-{step.name}.jsonl"
        margin = min(MARGIN_S, 0.2 * budget)
        cmd = [sys.executable, "-m", "moefusion.kernels.check", "--step", step.name, "--step-file", str(step_file),
               "--deadline", f"{time.time() + budget - margin:.3f}", "--device", "cpu" if self.dry else "cuda",
               "--iters", str(self.args.iters), "--big-batch", str(self.args.big_batch),
               "--build-dir", str(self.args.build_dir), "--forward", self.args.forward]
        self.results.log_line(f"\n===== [{index}/{len(self.steps)}] {step.name}: budget {budget:.0f} s, "
                              f"started {time.strftime('%H:%M:%S')}; {step.title}")
        offset = self.results.log.stat().st_size
        t, cpu = time.monotonic(), _children_cpu()
        timed_out = stopped = None
        with open(self.results.log, "a", encoding="utf-8") as log:
            self.child = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          env=self._child_env(),
                                          preexec_fn=_step_preexec(os.getpid()))  # noqa: PLW1509 (no threads)
            log.write(f"(process {self.child.pid})\n")
            log.flush()
            try:
                self.child.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                timed_out = True
            except _Stopped as e:
                stopped = e
            finally:
                _kill_group(self.child.pid)  # at the budget, on a stop, and any process the step left behind
                self.child.wait()
        code, self.child = self.child.returncode, None
        seconds, cpu = time.monotonic() - t, _children_cpu() - cpu
        rows, result = read_step_file(step_file)
        with open(self.results.log, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            tail = f.read()[-TAIL_CHARS:]
        if result is not None and not stopped:
            rec = self.record(step, index, result["status"], seconds, budget, result["detail"], rows,
                              result.get("data"), tail, cpu)
        elif stopped:
            rec = self.record(step, index, "killed", seconds, budget,
                              f"the check was stopped ({stopped}) during this step; {len(rows)} row(s) kept", rows,
                              tail=tail, cpu_s=cpu)
        elif timed_out:
            rec = self.record(step, index, "timeout", seconds, budget,
                              f"killed at its budget ({budget:.0f} s); {len(rows)} row(s) measured before",
                              rows, tail=tail, cpu_s=cpu)
        else:
            rec = self.record(step, index, "error", seconds, budget,
                              f"the step's process ended with exit status {code} and no result", rows, tail=tail,
                              cpu_s=cpu)
        if stopped:
            raise stopped
        return rec

    def run(self) -> int:
        def stop(signum, frame):
            for s in (signal.SIGTERM, signal.SIGINT):  # once: the cleanup that follows is not interrupted
                signal.signal(s, signal.SIG_IGN)
            raise _Stopped(signum)

        old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        mode = "dry run (CPU parts only)" if self.dry else "GPU"
        print(f"moefusion GPU check: {len(self.steps)} steps, {self.total:.0f} s in all, {mode}; "
              f"results in {self.results.out}", flush=True)
        index = 0
        try:
            for index, step in enumerate(self.steps, 1):
                self.run_one(step, index)
        except _Stopped as e:
            for s, h in old.items():
                signal.signal(s, h)
            print(f"stopped by {e} during step {index}; finished steps are in {self.results.results}", flush=True)
            return 128 + e.signum
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.finish()

    def run_one(self, step: Step, index: int) -> None:
        cap = self.budgets.get(step.name, step.dry_budget if self.dry else step.budget)
        left = self.left()
        if step.needs_library and self.build_failed and not self.dry:
            self.record(step, index, "skipped", 0, cap, "the build step failed: no library to test")
            return
        need = 1.0 if self.dry else min(step.min_s, cap)
        if left < need:
            self.record(step, index, "skipped", 0, cap,
                        f"the run's budget is spent ({max(0.0, left):.0f} s of {self.total:.0f} s left; "
                        f"the step needs {need:.0f} s)")
            return
        rec = self.run_child(step, index, min(cap, left))
        if step.name == "env":
            self.env = rec.get("data") or {}
            if not self.dry and not self.env.get("cuda_available"):
                self.dry = True
                self.dry_reason = ("no CUDA GPU (torch.cuda.is_available() is False)" if rec["status"] == "ok"
                                   else f"the env step did not finish ({rec['status']})")
                self.results.header["dry_run"] = True
                print(f"dry run: {self.dry_reason}; every step runs its CPU part or reports skipped", flush=True)
        elif step.name == "build":
            if rec["status"] == "ok" and (rec.get("data") or {}).get("library"):
                self.library = rec["data"]["library"]
            else:
                self.build_failed = rec["status"] != "skipped"

    def finish(self) -> int:
        records = [r for r in self.results.records if r["step"] != "end"]
        counts: dict[str, int] = {}
        for r in records:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        bad = [r["step"] for r in records if r["status"] in FAILED]
        detail = f"{len(records)} steps: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        if bad:
            detail += f" (not ok: {', '.join(bad)})"
        if self.dry:
            detail += f"; dry run: {self.dry_reason}"
        self.results.write({"step": "end", "status": "FAIL" if bad else "ok",
                            "seconds": round(time.monotonic() - self.t0, 1), "detail": detail,
                            "dry_run": self.dry, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        print()
        print(summary_markdown(self.results.header, self.results.records, steps_last=True))
        print(f"written: {self.results.results}, {self.results.summary}, {self.results.log}")
        return 1 if bad else 0


# ----------------------------------------------------------------------------- command line
def _step_budgets(values) -> dict[str, float]:
    out = {}
    for v in values or []:
        name, sep, sec = v.partition("=")
        if not sep or name not in STEP_NAMES:
            raise UserError(f"--step-budget {v}: give STEP=SECONDS with STEP one of {', '.join(STEP_NAMES)}")
        try:
            out[name] = float(sec)
        except ValueError:
            raise UserError(f"--step-budget {v}: {sec!r} is not a number of seconds") from None
        if out[name] <= 0:
            raise UserError(f"--step-budget {v}: give a positive number of seconds")
    return out


def _selected(only: str | None, skip: str | None) -> list[Step]:
    def names(text, flag):
        got = [n.strip() for n in (text or "").split(",") if n.strip()]
        for n in got:
            if n not in STEP_NAMES:
                raise UserError(f"{flag} {n}: unknown step; the steps are {', '.join(STEP_NAMES)}")
        return got

    keep, drop = names(only, "--steps"), names(skip, "--skip")
    # env always runs first: it says whether there is a GPU, and the summary's header comes from it
    return [s for s in STEPS if (s.name == "env" or not keep or s.name in keep) and s.name not in drop or
            s.name == "env"]


def list_steps() -> str:
    lines = [f"{'#':>2}  {'step':20s} {'budget s':>8} {'dry s':>6}  what it measures"]
    for i, s in enumerate(STEPS, 1):
        lines.append(f"{i:>2}  {s.name:20s} {s.budget:>8.0f} {s.dry_budget:>6.0f}  "
                     f"{'[GPU] ' if s.gpu_only else ''}{s.title}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UserError(message)

    ap = Parser(prog="python -m moefusion.kernels.check", description=__doc__.splitlines()[0],
                epilog="steps (run in this order; budgets are caps in seconds):\n" + list_steps(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help=f"output folder: results.jsonl, summary.md, log.txt (default {DEFAULT_OUT})")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                    help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f}: one 10-minute GPU call with "
                         "room to spare); no step starts past it")
    ap.add_argument("--step-budget", action="append", metavar="STEP=S",
                    help="this step's budget in seconds instead of its default (repeatable)")
    ap.add_argument("--steps", metavar="A,B", help="run only these steps (env always runs)")
    ap.add_argument("--skip", metavar="A,B", help="leave these steps out")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU parts only, on tiny sizes, even with a GPU (automatic without one)")
    ap.add_argument("--list", action="store_true", help="print the steps and their budgets, and exit")
    ap.add_argument("--iters", type=int, default=20, help="timed repetitions per measurement (median)")
    ap.add_argument("--big-batch", type=int, default=8, help="the batch of the throughput rows (default 8)")
    ap.add_argument("--build-dir", default=str(ROOT / "build" / "kernels-check"),
                    help="CMake build folder (default build/kernels-check)")
    ap.add_argument("--forward", default="__call__",
                    help="model method that takes (ir, vis) tensors and returns the fused image")
    # one step, in the process the check starts for it
    ap.add_argument("--step", choices=STEP_NAMES, help=argparse.SUPPRESS)
    ap.add_argument("--step-file", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help=argparse.SUPPRESS)
    return ap


def _run_step_here(args) -> int:
    """One step, in the process the check started for it (a process group of its own)."""
    if os.getpgrp() == os.getpid():
        # asked to stop (or the check died): end the whole group, the step's pytest / cmake / nvcc with it
        signal.signal(signal.SIGTERM, lambda *_: os.killpg(os.getpgrp(), signal.SIGKILL))
    env = json.loads(os.environ.get("MOEFUSION_CHECK_ENV") or "{}")
    ctx = Context(device=args.device, sink=StepSink(args.step_file, env),
                  budget=Budget(deadline=args.deadline if args.deadline else time.time() + 300),
                  iters=args.iters, build_dir=Path(args.build_dir), forward=args.forward, big_batch=args.big_batch)
    run_step(args.step, ctx)
    return 0


@cli_entry
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.step:
        return _run_step_here(args)
    if args.list:
        print(list_steps())
        return 0
    if args.budget <= 0 or args.iters < 1 or args.big_batch < 1:
        raise UserError("--budget, --iters and --big-batch must be positive")
    args.argv = argv
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file of that name exists; --out names a folder")
    try:
        runner = Runner(args, _selected(args.steps, args.skip), _step_budgets(args.step_budget))
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
