"""Execute the course notebooks with papermill and collect what they recorded.

    python -m cvhelpers.course.runner --profile smoke            # every notebook, smoke profile
    python -m cvhelpers.course.runner --profile full 00 01       # a subset, by number or name prefix

Each notebook runs in its own worker process (so its peak memory can be measured) with the
parameters ``PROFILE``, ``DATA_DIR``, ``OUTPUT_DIR`` and ``RESULTS_FILE`` injected. The runner
writes ``<out>/results.json`` and ``<out>/results.md`` (machine, versions, and for each notebook
its metrics with targets and verdicts, run seconds and peak memory) and exits non-zero when a
notebook raised or missed a target, printing the failing cell.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cvhelpers.course.results import NOTEBOOK_GLOB, lesson_number, read_metrics
from cvhelpers.env import machine_label
from cvhelpers.files import write_json_atomic

#: The memory goal for any notebook's full run on the course's 24 GB, 2-core machines.
MEMORY_LIMIT_MB = 6144
#: The smoke profile's time budget per notebook (a goal, reported, not enforced: machines are noisy).
SMOKE_BUDGET_S = 60
#: A cell that runs longer than this is stuck (e.g. a download on a stalled network).
CELL_TIMEOUT_S = 1800


def find_notebooks(notebooks_dir: Path, selectors: list[str]) -> list[Path]:
    """The notebooks in ``notebooks_dir`` named by one of ``selectors`` (all if empty): a lesson
    number (``"01"`` is ``01_cnn_from_scratch`` and not ``01b_architectures``) or the start of a
    name with its ``_`` (``"06_sem"``).

    Raises:
        SystemExit: a selector matches no notebook.
    """
    all_notebooks = sorted(notebooks_dir.glob(NOTEBOOK_GLOB))
    if not selectors:
        return all_notebooks
    chosen: list[Path] = []
    for selector in selectors:
        wanted = selector.removesuffix(".ipynb")
        matches = [nb for nb in all_notebooks
                   if lesson_number(nb.stem) == wanted or ("_" in wanted and nb.stem.startswith(wanted))]
        if not matches:
            names = ", ".join(nb.stem for nb in all_notebooks)
            raise SystemExit(f"no notebook matches {selector!r}; there are: {names}")
        chosen += [nb for nb in matches if nb not in chosen]
    return sorted(chosen)


def notebook_budget(path: Path, profile: str) -> float | None:
    """The run-time budget in seconds a notebook declares in its metadata, for ``profile``."""
    meta = json.loads(path.read_text()).get("metadata", {}).get("cvcookbook", {})
    budget = meta.get("budget_s", {}).get(profile)
    if budget is None and profile == "smoke":
        return SMOKE_BUDGET_S
    return budget


def run_worker(notebook: Path, executed: Path, parameters: dict[str, Any], status_file: Path) -> int:
    """Execute one notebook (in this process's kernel child) and write its status JSON."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # Progress bars are for people: in a recorded run each refresh would become a line of output
    # (thousands per epoch). The epoch lines that fit() prints stay.
    os.environ.setdefault("TQDM_DISABLE", "1")
    # A recorded run proves the course offline: with the download switch off, the kernel refuses
    # any connection off this machine (cvhelpers.env.block_network, installed by setup()).
    from cvhelpers.env import NETWORK_GUARD_ENV, online

    if not online():
        os.environ.setdefault(NETWORK_GUARD_ENV, "1")
    status: dict[str, Any] = {"status": "ok", "error": None}
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=parameters, cwd=str(notebook.parent),
            kernel_name="python3", progress_bar=False, execution_timeout=CELL_TIMEOUT_S,
        )
    except PapermillExecutionError as err:
        status = {"status": "error", "error": {
            "cell_index": err.cell_index, "execution_count": err.exec_count,
            "source": err.source, "ename": err.ename, "evalue": err.evalue,
            "traceback": err.traceback[-5:],
        }}
    except Exception as err:  # the kernel died, a timeout, a bad notebook file
        status = {"status": "error", "error": {
            "cell_index": None, "source": "", "ename": type(err).__name__, "evalue": str(err)[-2000:],
            "traceback": [],
        }}
    # The kernel is this worker's child: its peak resident memory is in RUSAGE_CHILDREN (KiB).
    status["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    write_json_atomic(status_file, status)
    return 0


def run_notebook(notebook: Path, profile: str, out: Path, data_dir: Path) -> dict[str, Any]:
    """Run one notebook in a worker process; return its entry for results.json."""
    name = notebook.stem
    executed = out / "notebooks" / notebook.name
    output_dir = out / "outputs" / name
    metrics_file = out / "metrics" / f"{name}.json"
    status_file = out / "metrics" / f"{name}.status.json"
    for stale in (metrics_file, status_file):
        stale.unlink(missing_ok=True)
    executed.parent.mkdir(parents=True, exist_ok=True)
    parameters = {
        "PROFILE": profile, "DATA_DIR": str(data_dir), "OUTPUT_DIR": str(output_dir),
        "RESULTS_FILE": str(metrics_file),
    }
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cvhelpers.course.runner", "--worker", str(notebook), str(executed),
         json.dumps(parameters), str(status_file)],
        check=False,
    )
    seconds = time.perf_counter() - start
    status = json.loads(status_file.read_text()) if status_file.exists() else {
        "status": "error", "peak_rss_mb": None,
        "error": {"cell_index": None, "source": "", "ename": "WorkerDied", "evalue": "no status", "traceback": []}}
    recorded = read_metrics(metrics_file) if metrics_file.exists() else {"metrics": [], "info": {}}
    missed = [m["name"] for m in recorded["metrics"] if m["passed"] is False]
    peak = status.get("peak_rss_mb")
    over_memory = profile == "full" and peak is not None and peak > MEMORY_LIMIT_MB
    if status["status"] == "error":
        verdict = "error"
    elif missed or over_memory:
        verdict = "failed"
    else:
        verdict = "passed"
    budget = notebook_budget(notebook, profile)
    return {
        "notebook": name, "status": verdict, "seconds": round(seconds, 1), "budget_s": budget,
        "within_budget": None if budget is None else seconds <= budget,
        "peak_rss_mb": peak, "memory_limit_mb": MEMORY_LIMIT_MB if profile == "full" else None,
        "metrics": recorded["metrics"], "missed": missed, "info": recorded.get("info", {}),
        "error": status.get("error"), "executed_notebook": str(executed),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def describe_failure(entry: dict[str, Any]) -> str:
    """A readable account of why a notebook failed: the failing cell and its error."""
    lines = [f"--- {entry['notebook']}: {entry['status'].upper()}"]
    error = entry.get("error")
    if error:
        where = f"cell {error['cell_index']}" if error.get("cell_index") is not None else "the run"
        lines.append(f"{error['ename']} in {where}: {error['evalue']}")
        if error.get("source"):
            lines += ["failing cell:"] + ["    " + line for line in error["source"].splitlines()]
    for name in entry.get("missed", []):
        metric = next(m for m in entry["metrics"] if m["name"] == name)
        lines.append(f"missed target: {name} = {metric['value']:.4g} (target {metric['target']})")
    if entry.get("memory_limit_mb") and (entry.get("peak_rss_mb") or 0) > entry["memory_limit_mb"]:
        lines.append(f"peak memory {entry['peak_rss_mb']} MB is over {entry['memory_limit_mb']} MB")
    lines.append(f"executed notebook: {entry['executed_notebook']}")
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    """results.json as a Markdown report: machine, versions, a notebook table, a metric table."""
    m = results["machine"]
    lines = [
        f"# CV Cookbook results ({results['profile']} profile)", "",
        f"Run finished {results['finished']} on {machine_label(m)}, {m['cores']} cores, "
        f"{m['memory_gb']} GB, GPU: {m['gpu'] or 'none'}; {m['os']}, Python {m['python']}.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v), "",
        "| notebook | status | seconds | on | budget s | peak memory MB |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for e in results["notebooks"]:  # an entry merged from another machine (--other-machine) carries its own
        budget = "" if e["budget_s"] is None else f"{e['budget_s']:g}" + ("" if e["within_budget"] else " (over)")
        on = e.get("machine") or m
        lines.append(f"| {e['notebook']} | {e['status']} | {e['seconds']:.1f} | {machine_label(on, cores=True)} | "
                     f"{budget} | {e['peak_rss_mb']} |")
    lines += ["", "| notebook | metric | value | target | verdict |", "| --- | --- | ---: | --- | --- |"]
    for e in results["notebooks"]:
        for metric in e["metrics"]:
            verdict = {True: "met", False: "MISSED", None: ""}[metric["passed"]]
            value = f"{metric['value']:.4g}" + (f" {metric['unit']}" if metric.get("unit") else "")
            lines.append(f"| {e['notebook']} | {metric['name']} | {value} | {metric['target'] or ''} | {verdict} |")
    return "\n".join(lines) + "\n"


#: What must agree for two runs' timings to share one record (one machine line above them). Two
#: CPUs of one model name can differ in their vector extensions (AVX2 only vs AVX-512) and run the
#: same training ~2x apart; a record written before ``vector_isa`` was kept counts as another machine.
_SAME_MACHINE = ("cpu", "vector_isa", "cores", "gpu")


class MachineMismatchError(SystemExit):
    """The earlier results were recorded on another machine: merging would relabel their times."""


def check_mergeable(path: Path, profile: str, machine: dict[str, Any] | None = None) -> None:
    """Refuse, before anything runs, to add runs to a results file of another machine.

    A results file names one machine for all its notebooks; merging this machine's runs into
    another's would credit the old timings to this machine (or the new ones to the old).

    Raises:
        MachineMismatchError: ``path`` holds runs of ``profile`` from a different CPU, core
            count or GPU. Its message says what to do (re-run everything, or another ``--out``).
    """
    from cvhelpers.env import machine_info

    if not path.exists():
        return
    old = json.loads(path.read_text())
    if old.get("profile") != profile or not old.get("notebooks"):
        return
    before, now = old.get("machine", {}), machine or machine_info()
    differs = [k for k in _SAME_MACHINE if before.get(k) != now.get(k)]
    if differs:
        raise MachineMismatchError(
            f"{path} holds {profile}-profile runs from another machine ("
            + ", ".join(f"{k}: {before.get(k)!r} there, {now.get(k)!r} here" for k in differs)
            + "); merging would put one machine's name on both. Run every notebook again into a "
            f"fresh folder (--out elsewhere, or move {path} away first).")


def merge_results(path: Path, profile: str, entries: list[dict[str, Any]],
                  other_machine: bool = False, machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge this run's entries into ``path``'s earlier ones (same profile) by notebook name.

    ``other_machine=True`` (recording a few notebooks run on another machine into the course's
    record, ``--record ... --other-machine``): where this machine is not the record's, each new
    entry carries its own ``machine`` and the record keeps its own machine line, so no timing is
    credited to the wrong machine. An entry run on the record's machine carries none.
    ``machine``: where the entries ran (default: this machine).

    Raises:
        MachineMismatchError: see :func:`check_mergeable` (without ``other_machine``).
    """
    from cvhelpers.env import machine_info, package_versions

    if not other_machine:
        check_mergeable(path, profile, machine)
    previous: list[dict[str, Any]] = []
    old: dict[str, Any] = {}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("profile") == profile:
            previous = old.get("notebooks", [])
    machine, versions = machine or machine_info(), package_versions()
    record_machine = old.get("machine", {}) if previous else machine
    if other_machine and any(record_machine.get(k) != machine.get(k) for k in _SAME_MACHINE):
        entries = [{**e, "machine": machine} for e in entries]
        machine, versions = record_machine, old.get("versions", versions)
    else:
        entries = [{k: v for k, v in e.items() if k != "machine"} for e in entries]
    by_name = {e["notebook"]: e for e in previous}
    by_name.update({e["notebook"]: e for e in entries})
    return {
        "profile": profile,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "versions": versions,
        "notebooks": [by_name[k] for k in sorted(by_name)],
    }


def record_runs(results: Path, record: Path, names: list[str], other_machine: bool = False) -> list[str]:
    """Copy the passing entries of ``names`` (notebook stems or prefixes) from a runner's
    ``results`` into the committed ``record`` (``docs/results/<profile>.json``), leaving the
    other notebooks' entries as they are; returns the stems recorded.

    Raises:
        ValueError: a name matches no passing entry of ``results``.
        MachineMismatchError: ``record`` is another machine's and ``other_machine`` is False.
    """
    run = json.loads(Path(results).read_text())
    chosen = []
    for name in names:
        found = [e for e in run["notebooks"] if e["notebook"].startswith(name) and e["status"] == "passed"]
        if not found:
            raise ValueError(f"{results}: no passing run of {name!r} to record")
        chosen += [e for e in found if e not in chosen]
    merged = merge_results(Path(record), run["profile"], chosen, other_machine=other_machine,
                           machine=run.get("machine"))
    write_json_atomic(Path(record), merged)
    return [e["notebook"] for e in chosen]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--summary":  # reprint the closing line of an earlier run
        notebooks = json.loads(Path(argv[1]).read_text())["notebooks"]
        failed = sum(e["status"] != "passed" for e in notebooks)
        print(f"notebooks: {len(notebooks) - failed} passed, {failed} failed")
        return 1 if failed else 0
    if argv and argv[0] == "--record":  # --record BUILD/results.json docs/results/full.json [--other-machine] NB...
        names = [a for a in argv[3:] if a != "--other-machine"]
        recorded = record_runs(Path(argv[1]), Path(argv[2]), names, other_machine="--other-machine" in argv[3:])
        print(f"recorded {', '.join(recorded)} into {argv[2]}")
        return 0
    if argv and argv[0] == "--worker":
        notebook, executed, parameters, status_file = argv[1:5]
        return run_worker(Path(notebook), Path(executed), json.loads(parameters), Path(status_file))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="numbers or name prefixes, e.g. 00 01 (default: all)")
    parser.add_argument("--profile", choices=("smoke", "full"), default="full")
    parser.add_argument("--out", type=Path, default=Path("build"))
    parser.add_argument("--notebooks-dir", type=Path, default=Path("notebooks"))
    parser.add_argument("--data-dir", type=Path, default=Path("datasets"))
    args = parser.parse_args(argv)

    notebooks = find_notebooks(args.notebooks_dir, args.notebooks)
    out, data_dir = args.out.resolve(), args.data_dir.resolve()
    check_mergeable(out / "results.json", args.profile)  # before any work, not after it
    entries = []
    for nb in notebooks:
        print(f"running {nb.name} ({args.profile}) ...", flush=True)
        entry = run_notebook(nb.resolve(), args.profile, out, data_dir)
        entries.append(entry)
        print(f"  {entry['status']} in {entry['seconds']:.1f} s, peak {entry['peak_rss_mb']} MB, "
              + ", ".join(f"{m['name']}={m['value']:.4g}" for m in entry["metrics"]), flush=True)
        if entry["status"] != "passed":
            print(describe_failure(entry), flush=True)
    results = merge_results(out / "results.json", args.profile, entries)
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(render_markdown(results))
    failed = [e for e in entries if e["status"] != "passed"]
    print(f"results: {out / 'results.json'} and {out / 'results.md'}")
    for entry in failed:
        print(f"FAILED {entry['notebook']}: {entry['status']}")
    print(f"notebooks: {len(entries) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
