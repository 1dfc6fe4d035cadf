"""Reading an AWS regional offer file: the refresh's stream (ijson, two C pipelines, only the
wanted products kept) against loading the whole file with the standard library's json.

The real files run to GBs (us-east-1), so `json.load` is not an option there: this measures what
the stream costs in speed for the memory it saves. The file is synthetic, in the documented shape
(tests/price_contract.py writes it): `--products` products, each with OnDemand and Reserved terms.
Medians of `--runs` runs; peak memory from tracemalloc in a separate, untimed run.

    python benchmarks/prices_bench.py --products 20000 --runs 3
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.price_contract import PriceServer
from tpi_jupyter.prices.refresh.aws import on_demand

WANTED = {"x1.large", "x2.large"}


def offer_file(products: int) -> bytes:
    truth = {"aws": {"r": {f"x{i}.large": (0.1, 0.05) for i in range(products // 6)}}}
    return json.dumps(PriceServer(truth).offer_file("r")).encode()  # 6 products per type


def stream(data: bytes) -> Any:
    return on_demand(io.BytesIO(data), WANTED)


def whole(data: bytes) -> Any:
    return json.loads(data)


def timed(function: Callable[[bytes], Any], data: bytes, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak(function: Callable[[bytes], Any], data: bytes) -> float:
    tracemalloc.start()
    kept = function(data)
    _, high = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return high / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    data = offer_file(args.products)
    size = len(data) / 2**20
    rows = [(name, timed(function, data, args.runs), peak(function, data))
            for name, function in (("tpi refresh stream (ijson)", stream), ("json.loads, whole file", whole))]  # fmt: skip
    base = rows[1][1]
    lines = [f"## AWS offer file, {size:.0f} MiB, {args.products} products, median of {args.runs} runs "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             "| reader | median | MiB/s | x json.loads | peak memory |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {seconds:.2f} s | {size / seconds:.1f} | {seconds / base:.2f} | {memory:.0f} MiB |"
              for name, seconds, memory in rows]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    (Path(__file__).parent / "RESULTS-prices.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
