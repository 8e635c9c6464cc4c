"""Several workers on one study from one command: a process per GPU (``--gpus``) or N on CPU (``--workers``).

Each worker is ``python -m hpsearch search ... --worker-index K``, a process of its own, so a crash (or an
out-of-memory kill) takes one worker down, never the others, and its trial is retried by the heartbeat.
The first worker starts alone: it checks the config, data, model and store, and creates the study. The others
start once it has, so a mistake is reported once (exit 2, nothing written) and no two processes create the
store's tables at the same time.

The parent prefixes every line a worker writes with its name (``[gpu0]``, ``[w1]``), forwards SIGINT and
SIGTERM to the workers (each finishes its epoch, checkpoints and re-queues its trial), waits for all of them
and exits non-zero if any failed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from hpsearch.errors import ConfigError

# run_search prints this line right after the study is open (created, or checked against the config).
READY = re.compile(r"^study '.*' in .*: \d+ train / ")


@dataclass
class Worker:
    label: str  # "gpu0", "w1": the prefix of its lines
    index: int  # --worker-index: offsets the sampler seed
    env: dict[str, str] = field(default_factory=dict)  # added to the parent's environment
    process: subprocess.Popen | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    signalled: int = 0  # SIGINT/SIGTERM passed on to it


def finished_trials(storage_url: str, study_name: str) -> int | None:
    """Finished (complete + pruned) trials of the study, or None when it does not exist yet: with the budget
    already met, no worker needs to start and load the data only to say so."""
    import optuna

    from hpsearch.study import FINISHED, _summaries, counts, open_storage

    try:
        storage = open_storage(storage_url, create=False)
    except ConfigError:
        return None  # no store yet: the first worker creates it
    if study_name not in {s.study_name for s in _summaries(storage)}:
        return None
    c = counts(optuna.load_study(study_name=study_name, storage=storage))
    return sum(c[state] for state in FINISHED)


def parse_gpus(spec: str, visible: str | None = None, count: int | None = None) -> list[str]:
    """``all`` or ``0,1,3`` -> the CUDA device ids to give one worker each.

    ``visible`` is the parent's ``CUDA_VISIBLE_DEVICES`` (Slurm sets it): index K of ``--gpus`` then means the
    K-th device listed there, as it would for torch. ``count`` is the number of GPUs torch sees.
    """
    spec = spec.strip()
    listed = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
    if spec == "all":
        if count is None:
            count = _count_gpus()
        if count == 0:
            raise ConfigError(
                "--gpus all: no CUDA GPU is visible on this machine; use --workers N for CPU workers"
            )
        return listed[:count] if listed else [str(i) for i in range(count)]
    parts = [p.strip() for p in spec.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(
            f"--gpus {spec!r}: expected `all` or GPU indices separated by commas, e.g. --gpus 0,1,3"
        )
    if len(set(parts)) != len(parts):
        raise ConfigError(f"--gpus {spec!r}: a GPU is listed twice; give each GPU once")
    if count is None:
        count = _count_gpus()
    bad = [p for p in parts if int(p) >= count]
    if bad and count == 0:
        raise ConfigError(
            f"--gpus {spec!r}: no CUDA GPU is visible on this machine; use --workers N for CPU workers"
        )
    if bad:
        via = f" via CUDA_VISIBLE_DEVICES={visible}" if listed else ""
        raise ConfigError(
            f"--gpus {spec!r}: no GPU {', '.join(bad)} on this machine ({count} visible{via});"
            f" use 0..{count - 1}"
        )
    return [listed[int(p)] for p in parts] if listed else parts


def _count_gpus() -> int:
    import torch  # only when --gpus is given

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_workers(
    n_workers: int | None = None, gpus: list[str] | None = None, first_index: int = 0
) -> list[Worker]:
    """One Worker per GPU (with ``CUDA_VISIBLE_DEVICES`` set to it) or ``n_workers`` CPU workers."""
    if gpus:
        return [Worker(f"gpu{g}", first_index + k, {"CUDA_VISIBLE_DEVICES": g}) for k, g in enumerate(gpus)]
    if n_workers is None or n_workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {n_workers}")
    # CPU workers share the cores: one thread each by default, or N workers fight over every core.
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    env = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": str(threads)}
    return [Worker(f"w{first_index + k}", first_index + k, dict(env)) for k in range(n_workers)]


class _Forward:
    """While workers run: SIGINT/SIGTERM go to every worker (each stops gracefully); the second one too."""

    def __init__(self, workers: list[Worker], out: TextIO):
        self.workers, self.out, self.previous, self.received = workers, out, {}, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = self.received or signum
        name = signal.Signals(signum).name
        self.out.write(f"hpsearch: {name}: passing it on to {len(self.workers)} workers\n")
        self.out.flush()
        send_signal(self.workers, signum)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def send_signal(workers: list[Worker], signum: int) -> None:
    for w in workers:
        if w.process is not None and w.process.poll() is None:
            try:
                w.process.send_signal(signum)
                w.signalled += 1
            except ProcessLookupError:
                pass


def _pump(worker: Worker, stream, out: TextIO, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if READY.match(line):
            worker.ready.set()
        with lock:
            out.write(f"[{worker.label}] {line}\n")
            out.flush()
    stream.close()


def _start(worker: Worker, command: list[str], out: TextIO, lock: threading.Lock) -> list[threading.Thread]:
    env = {**os.environ, **worker.env, "PYTHONUNBUFFERED": "1"}
    # A session of its own: Ctrl-C in a terminal reaches only the parent, which passes it on once.
    worker.process = subprocess.Popen(
        [*command, "--worker-index", str(worker.index)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    threads = [
        threading.Thread(target=_pump, args=(worker, s, out, lock), daemon=True)
        for s in (worker.process.stdout, worker.process.stderr)
    ]
    for t in threads:
        t.start()
    return threads


def run_workers(
    workers: list[Worker], command: list[str], out: TextIO | None = None
) -> tuple[int, int | None]:
    """Run ``command`` once per worker; returns (exit status, signal received or None).

    The exit status is 0 when every worker exited 0; else the first worker's status when it failed before the
    study was open (2 for bad input), else 1.
    """
    out = out or sys.stderr
    lock = threading.Lock()
    threads: list[threading.Thread] = []
    with _Forward(workers, out) as forward:
        lead = workers[0]
        threads += _start(lead, command, out, lock)
        while not lead.ready.is_set() and lead.process.poll() is None and forward.received is None:
            lead.ready.wait(0.2)
        first = lead.process
        if first.poll() is not None and first.returncode != 0 and not lead.ready.is_set():
            for t in threads:
                t.join()
            return first.returncode, forward.received
        for w in workers[1:]:
            if forward.received is not None:
                break  # stopping: start no more
            threads += _start(w, command, out, lock)
            if forward.received is not None and not w.signalled:  # it came while this one was starting
                send_signal([w], forward.received)
        codes = {}
        for w in workers:
            if w.process is None:
                continue
            while w.process.poll() is None:
                time.sleep(0.2)  # a plain wait() would hold off the signal handler on some platforms
            codes[w.label] = w.process.returncode
        for t in threads:
            t.join()
    failed = {label: code for label, code in codes.items() if code != 0}
    if failed and forward.received is None:
        with lock:
            listed = ", ".join(f"{k} (exit {v})" for k, v in failed.items())
            out.write(f"hpsearch: workers failed: {listed}\n")
    return (1 if failed else 0), forward.received
