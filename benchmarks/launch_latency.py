"""Launch latency of a local task (issue 11, item 12).

Per run, in one warm process (as a kernel is): the clock starts when the cell would run (spec
parsing included) and stops
- when `launch()` returns (no workdir),
- when the script's first line reaches the CLI's follow loop (`tpi logs --follow`, `--wait`),
- when it reaches a TaskWidget's model (the `log_view` trait), the widget polling as in a notebook.
The follow loop and the widget run at the same time, on the same task.

Goals: first line median < 300 ms in both faces; launch() median < 100 ms. Writes
benchmarks/RESULTS-launch-latency.md. Run: .venv/bin/python benchmarks/launch_latency.py [RUNS]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

RUNS = 15


def one_run(number: int) -> tuple[float, float, float]:
    from tpi_jupyter.commands import build_spec
    from tpi_jupyter.task import Task, launch
    from tpi_jupyter.widgets import TaskWidget

    began = time.perf_counter()
    task = launch(
        build_spec([f"name=latency{number}"], {"cloud": "local"}), "#!/bin/bash\necho first\nsleep 3\n"
    )
    launched = time.perf_counter() - began
    assert isinstance(task, Task)
    in_widget = threading.Event()
    widget_at = [0.0]
    view = TaskWidget(task, tail_lines=50)

    def on_change(_change: object) -> None:
        if "first" in view.lines and not in_widget.is_set():
            widget_at[0] = time.perf_counter() - began
            in_widget.set()

    view.log_view.observe(on_change, names="value")
    on_change(None)
    cli_at = 0.0
    for _rank, _stamp, text in task.follow():
        if text == "first":
            cli_at = time.perf_counter() - began
            break
    in_widget.wait(30)
    view.close()
    task.destroy()
    return launched, cli_at, widget_at[0]


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else RUNS
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as workdir:
        os.environ["TPI_JUPYTER_HOME"] = home
        os.chdir(workdir)
        one_run(-1)  # warm up imports, as a kernel that ran %load_ext has
        samples = [one_run(number) for number in range(runs)]
    launch_ms, cli_ms, widget_ms = ([s[i] * 1000 for s in samples] for i in range(3))
    rows = [
        ("launch() returns (no workdir)", launch_ms, 100),
        ("first log line in the CLI's follow loop", cli_ms, 300),
        ("first log line in the widget's model", widget_ms, 300),
    ]
    table = ["| measure | median | p90 | max | goal | met |", "|---|---|---|---|---|---|"]
    for name, values, goal in rows:
        median, p90 = statistics.median(values), statistics.quantiles(values, n=10)[-1]
        table.append(f"| {name} | {median:.0f} ms | {p90:.0f} ms | {max(values):.0f} ms | < {goal} ms median "
                     f"| {'yes' if median < goal else 'NO'} |")  # fmt: skip
    load = os.getloadavg()[0]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = (f"## Local task launch latency ({stamp}, {runs} runs, {os.cpu_count()} cores, "
            f"load average {load:.1f} at the end)\n\n" + "\n".join(table))  # fmt: skip
    print(text)
    Path(__file__).with_name("RESULTS-launch-latency.md").write_text(text + "\n", encoding="utf-8")
    return 0 if all(statistics.median(values) < goal for _, values, goal in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
