"""The long soak of the fault suite (issue 18): the tests of tests/faults/ in their long forms.

    python benchmarks/soak.py [--seed N] [--preemptions 20] [--crashes 10] [--storage-rounds 3]

Runs each fault test file in its own pytest process with TPI_FAULT_SOAK=1, the sizes above and
one seed (printed; a row is replayed with the command in its table line), collects the figures
the tests append to a JSON-lines file, and writes the table to benchmarks/RESULTS-soak.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS-soak.md"
FILES = ["test_spot.py", "test_storage.py", "test_crashes.py", "test_kernel_restarts.py",
         "test_disk_full.py", "test_secrets.py", "test_storage_clouds.py",
         "test_crashes_clouds.py", "test_k8s_evictions.py", "test_storage_claim.py"]  # fmt: skip
STORAGE_FILES = {
    "local+s3": "test_storage.py",
    "local+gcs": "test_storage_clouds.py",
    "local+az": "test_storage_clouds.py",
    "k8s-claim": "test_storage_claim.py",
}
STORAGE_ERRORS = {"local+s3": "500/503 SlowDown", "local+gcs": "GCS 503/429/500 (JSON)",
                  "local+az": "Azure 503 ServerBusy/500 InternalError (XML, x-ms-error-code)",
                  "k8s-claim": "pod proxy 503/429/500 (Status)"}  # fmt: skip


def revision() -> str:
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def run_file(name: str, env: dict[str, str], select: str = "") -> tuple[int, float, str]:
    # The long forms outlast the suite's per-test limit (pytest-timeout, 300 s); k8s spot takes ~1 h.
    command = [sys.executable, "-m", "pytest", f"tests/faults/{name}", "-q", "-p", "no:cacheprovider", "-s",
               "-o", "timeout=5400", *(["-k", select] if select else [])]  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    log = Path(tempfile.gettempdir()) / f"soak-{name}-{env['TPI_FAULT_SEED']}.log"
    log.write_text(done.stdout + done.stderr)
    lines = done.stdout.strip().splitlines()
    failed = [line for line in lines if line.startswith("FAILED")]
    tail = "\n".join([*failed, *lines[-1:], f"(whole output: {log})"])
    return done.returncode, time.monotonic() - began, tail


def row(item: dict[str, Any], seed: int, sizes: str) -> tuple[str, str, str, str, str, str]:
    """kind, backend, injected, survived, lost, how to reproduce."""
    kind, backend = item["kind"], item["backend"]
    replay = f"`TPI_FAULT_SOAK=1 TPI_FAULT_SEED={item.get('seed', seed)} {sizes} .venv/bin/python -m pytest tests/faults/"
    if kind == "spot":
        lost = (
            item["lost"]
            if "lost" in item
            else sum(1 for e in item["final_epochs"].values() if e != item["last_epoch"])
        )
        return ("spot preemptions", backend, str(item["preemptions"]),
                f"{item['preemptions']} (ranks ended at epoch {item['last_epoch']}; worst restart "
                f"{item['max_setback']} epochs back, limit {item['allowed_setback']}; {item['seconds']:.0f} s)",
                str(lost), replay + f"test_spot.py -k {backend}`")  # fmt: skip
    if kind == "storage":
        errors = sum(item["http_errors"].values())
        which = "" if backend in ("local+s3", "k8s-claim") else f" and {backend.removeprefix('local+')}"
        return (f"storage: {STORAGE_ERRORS[backend]} + resets, stalls, cut connections, latency", backend,
                f"{errors} HTTP errors ({item['http_errors']}) + TCP toxics on a share of connections",
                f"all ({item['files']} files whole by sha256, {item['log_lines']} log lines in order)",
                str(item["lost"]), replay + f"{STORAGE_FILES[backend]} -k 'survive{which}'`")  # fmt: skip
    if kind == "crash":
        rounds = item["rounds"]
        killed = sum(1 for r in rounds if r["killed"])
        swept = sum(1 for r in rounds if r["left_for_sweep"])
        return ("client SIGKILL (tpi run / tpi destroy)", backend, f"{killed} kills in {len(rounds)} rounds",
                f"{len(rounds)} (destroy alone: {len(rounds) - swept}; destroy then sweep: {swept})",
                "0", replay + item.get("file", "test_crashes.py") + "`")  # fmt: skip
    if kind.startswith("kernel"):
        what = (
            "during upload (cleaned by destroy)"
            if kind == "kernel-upload"
            else "while streaming, while --wait"
        )
        return (f"kernel restart {what}", backend, str(item["restarts"]),
                str(item.get("survived") or item.get("cleaned")), str(item["lost"]),
                replay + "test_kernel_restarts.py`")  # fmt: skip
    if kind == "disk":
        return ("machine disk full (tmpfs)", backend, "1", f"failed in one line; {item['kept_files']} synced files kept",
                str(item["lost"]), replay + "test_disk_full.py`")  # fmt: skip
    return ("secret scan", backend, f"{item['secrets']} planted values", f"{item['artefacts']} artefacts scanned",
            f"{len(item['leaks'])} leaks", replay + "test_secrets.py`")  # fmt: skip


def failed_row(name: str, seed: int, tail: str, sizes: str) -> str:
    """A run that failed records no figures: it still gets a row, with what pytest said."""
    failed = [line for line in tail.splitlines() if line.startswith("FAILED")] or tail.splitlines()[:1]
    said = "; ".join(line.split(" - ")[0].removeprefix("FAILED ") for line in failed)
    return (
        f"| **run failed**: {said} | - | - | - | not measured | `TPI_FAULT_SOAK=1 TPI_FAULT_SEED={seed} "
        f"{sizes} .venv/bin/python -m pytest tests/faults/{name}` |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1, 10**6))
    parser.add_argument("--preemptions", type=int, default=20)
    parser.add_argument("--crashes", type=int, default=10)
    parser.add_argument("--storage-rounds", type=int, default=3)
    parser.add_argument("--files", default=",".join(FILES))
    parser.add_argument("--figures", default="", help="a JSON-lines file to add this run's figures to")
    parser.add_argument("-k", dest="select", default="", help="pytest -k expression (e.g. 'gcp or az')")
    args = parser.parse_args()
    print(f"soak seed {args.seed}", flush=True)
    sizes = f"TPI_FAULT_PREEMPTIONS={args.preemptions} TPI_FAULT_CRASHES={args.crashes}"
    if args.figures:  # kept: rows of earlier runs (other -k selections) join the table
        figures_file = Path(args.figures)
    else:
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as handle:
            figures_file = Path(handle.name)
    env = {**os.environ, "TPI_FAULT_SOAK": "1", "TPI_FAULT_PREEMPTIONS": str(args.preemptions),
           "TPI_FAULT_CRASHES": str(args.crashes), "TPI_FAULT_FIGURES": str(figures_file),
           "TPI_FAULT_SEED": str(args.seed)}  # fmt: skip
    runs = []
    for name in args.files.split(",") if args.files else []:
        for round_ in range(args.storage_rounds if name in STORAGE_FILES.values() else 1):
            env["TPI_FAULT_SEED"] = str(args.seed + round_)
            code, seconds, tail = run_file(name, env, args.select)
            runs.append((name, code, seconds, tail, int(env["TPI_FAULT_SEED"])))
            print(f"{name} (seed {args.seed + round_}): exit {code} in {seconds:.0f} s\n{tail}", flush=True)
    items = [json.loads(line) for line in figures_file.read_text().splitlines() if line.strip()]
    if not args.figures:
        figures_file.unlink()
    lines = [
        "# Fault soak (`benchmarks/soak.py`)", "",
        f"Seed {args.seed}; {sizes}; storage rounds {args.storage_rounds}; commit {revision()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores.", "",
        "| fault | backend | injected | survived | lost | reproduce |", "|---|---|---|---|---|---|",
        *[f"| {' | '.join(row(item, args.seed, sizes))} |" for item in items],
        *[failed_row(name, seed, tail, sizes) for name, code, _, tail, seed in runs if code != 0], "",
        "| test file | exit | seconds |", "|---|---|---|",
        *[f"| {name} | {code} | {seconds:.0f} |" for name, code, seconds, _, _ in runs], "",
    ]  # fmt: skip
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
    return max([code for _, code, _, _, _ in runs] or [0])


if __name__ == "__main__":
    sys.exit(main())
