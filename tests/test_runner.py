"""The notebook runner, end to end on three tiny notebooks (kernels run in subprocesses)."""

import json
import subprocess
import sys

import nbformat
import pytest

from cvhelpers.course.runner import find_notebooks, render_markdown

PARAMETERS = 'PROFILE = "full"\nRESULTS_FILE = None\nDATA_DIR = "."\nOUTPUT_DIR = "."'


def write_notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]})
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from cvhelpers.course.results import Recorder\n"
        f"rec = Recorder(RESULTS_FILE, notebook={path.stem!r}, profile=PROFILE)"),
        nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    nbs = root / "notebooks"
    nbs.mkdir()
    write_notebook(nbs / "00_ok.ipynb", 'rec.record("acc", 0.95, target=">= 0.9", smoke_target=">= 0.5")\n'
                   'import pathlib; pathlib.Path(OUTPUT_DIR).mkdir(parents=True); rec.note("profile", PROFILE)')
    write_notebook(nbs / "01_raises.ipynb", "x = 1\nraise RuntimeError('boom in the lesson')")
    write_notebook(nbs / "02_misses.ipynb", 'rec.record("acc", 0.4, target=">= 0.9", smoke_target=">= 0.5")')
    out = root / "build"
    proc = subprocess.run(
        [sys.executable, "-m", "cvhelpers.course.runner", "--profile", "smoke", "--notebooks-dir", str(nbs),
         "--out", str(out), "--data-dir", str(root)],
        capture_output=True, text=True, timeout=300,
    )
    return proc, out, nbs


def test_runner_exit_code_and_summary_line(run):
    proc, _, _ = run
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "notebooks: 1 passed, 2 failed"


def test_runner_shows_the_failing_cell_and_missed_target(run):
    proc, _, _ = run
    assert "RuntimeError in cell 3: boom in the lesson" in proc.stdout
    assert "raise RuntimeError('boom in the lesson')" in proc.stdout
    assert "missed target: acc = 0.4 (target >= 0.5)" in proc.stdout


def test_results_json_and_markdown(run):
    _, out, _ = run
    results = json.loads((out / "results.json").read_text())
    entries = {e["notebook"]: e for e in results["notebooks"]}
    assert [entries[n]["status"] for n in ("00_ok", "01_raises", "02_misses")] == ["passed", "error", "failed"]
    ok = entries["00_ok"]
    assert ok["metrics"][0] == {"name": "acc", "value": 0.95, "target": ">= 0.5", "passed": True, "unit": ""}
    assert ok["info"] == {"profile": "smoke"}  # the injected parameter reached the kernel
    assert ok["peak_rss_mb"] > 30  # the kernel's memory, not zero
    assert ok["seconds"] > 0 and ok["budget_s"] == 60
    assert results["versions"]["torch"] and results["machine"]["cores"] >= 1
    md = (out / "results.md").read_text()
    assert "| 02_misses | acc | 0.4 | >= 0.5 | MISSED |" in md
    assert md == render_markdown(results)
    assert (out / "notebooks" / "00_ok.ipynb").exists()


def test_find_notebooks_by_prefix(run):
    _, _, nbs = run
    assert [p.stem for p in find_notebooks(nbs, ["02", "00"])] == ["00_ok", "02_misses"]
    assert len(find_notebooks(nbs, [])) == 3
    with pytest.raises(SystemExit, match="no notebook matches '7'"):
        find_notebooks(nbs, ["7"])


def test_summary_reprints_the_closing_line(run, capsys):
    from cvhelpers.course.runner import main

    _, out, _ = run
    assert main(["--summary", str(out / "results.json")]) == 1
    assert capsys.readouterr().out.strip() == "notebooks: 1 passed, 2 failed"


def test_find_notebooks_by_number_with_a_letter(tmp_path):
    for name in ("01_cnn", "01b_architectures", "02_transfer"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    assert [p.stem for p in find_notebooks(tmp_path, [])] == ["01_cnn", "01b_architectures", "02_transfer"]
    assert [p.stem for p in find_notebooks(tmp_path, ["01"])] == ["01_cnn"]  # not 01b
    assert [p.stem for p in find_notebooks(tmp_path, ["01b"])] == ["01b_architectures"]
    assert [p.stem for p in find_notebooks(tmp_path, ["01b_arch"])] == ["01b_architectures"]


def test_runs_of_another_machine_are_recorded_with_their_machine(tmp_path):
    from cvhelpers.course.runner import record_runs
    from cvhelpers.course.timeline import render_time_line
    from cvhelpers.env import machine_info

    other = {**machine_info(), "cpu": "Another CPU"}
    old = {"notebook": "00_old", "status": "passed", "seconds": 100.0, "finished": "2026-01-01T00:00:00+00:00"}
    record = tmp_path / "full.json"
    record.write_text(json.dumps({"profile": "full", "finished": "2026-01-01T00:00:00+00:00", "machine": other,
                                  "versions": {"torch": "old"}, "notebooks": [old]}))
    new = {"notebook": "01_new", "status": "passed", "seconds": 200.0, "finished": "2026-02-02T00:00:00+00:00"}
    failed = {"notebook": "02_broken", "status": "error", "seconds": 1.0}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"profile": "full", "machine": machine_info(), "notebooks": [new, failed]}))
    with pytest.raises(SystemExit, match="another machine"):  # not without saying so
        record_runs(results, record, ["01"])
    with pytest.raises(ValueError, match="no passing run of '02'"):
        record_runs(results, record, ["02"], other_machine=True)
    assert record_runs(results, record, ["01"], other_machine=True) == ["01_new"]
    merged = json.loads(record.read_text())
    assert merged["machine"] == other and merged["versions"] == {"torch": "old"}  # the record's own line stays
    entries = {e["notebook"]: e for e in merged["notebooks"]}
    assert "machine" not in entries["00_old"] and entries["01_new"]["machine"] == machine_info()
    smoke = {"notebooks": []}
    assert "Another CPU" in render_time_line("00_old", merged, smoke)
    line = " ".join(render_time_line("01_new", merged, smoke).split())
    assert machine_info()["cpu"] in line and "Another CPU" not in line and "run 2026-02-02" in line
    # run again on the record's own machine: the entry loses its stamp
    results.write_text(json.dumps({"profile": "full", "machine": other, "notebooks": [new]}))
    record.write_text(json.dumps({**merged, "machine": other}))
    record_runs(results, record, ["01_new"], other_machine=True)
    assert "machine" not in {e["notebook"]: e for e in json.loads(record.read_text())["notebooks"]}["01_new"]
    # the report names each entry's CPU: the record's for its own runs, the stamp for merged ones
    merged = {**merged, "finished": "2026-02-02T00:00:00+00:00"}
    for e in merged["notebooks"]:
        e.update(budget_s=None, within_budget=True, peak_rss_mb=1.0, metrics=[])
    rows = {line.split(" | ")[0][2:]: line for line in render_markdown(merged).splitlines() if line.startswith("| 0")}
    assert "Another CPU" in rows["00_old"] and "Another CPU" not in rows["01_new"]
    assert machine_info()["cpu"] in rows["01_new"]


def test_results_of_another_machine_are_not_relabelled(tmp_path):
    from cvhelpers.course.runner import MachineMismatchError, check_mergeable, merge_results
    from cvhelpers.env import machine_info

    entry = {"notebook": "00_ok", "status": "passed", "seconds": 1.0}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"profile": "full", "machine": {**machine_info(), "cpu": "Another CPU"},
                                "notebooks": [entry]}))
    with pytest.raises(MachineMismatchError, match="another machine.*'Another CPU' there"):
        merge_results(path, "full", [{**entry, "notebook": "01_new"}])
    check_mergeable(path, "smoke")  # another profile's file is replaced, not merged: nothing to refuse
    path.write_text(json.dumps({"profile": "full", "machine": machine_info(), "notebooks": [entry]}))
    merged = merge_results(path, "full", [{**entry, "notebook": "01_new"}])
    assert [e["notebook"] for e in merged["notebooks"]] == ["00_ok", "01_new"]
    # the runner refuses before it runs anything, not after an hour of training
    path.write_text(json.dumps({"profile": "full", "machine": {**machine_info(), "cores": 999},
                                "notebooks": [entry]}))
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    write_notebook(nbs / "00_work.ipynb", "import pathlib; pathlib.Path(DATA_DIR, 'ran').write_text('yes')")
    proc = subprocess.run([sys.executable, "-m", "cvhelpers.course.runner", "--out", str(tmp_path),
                           "--notebooks-dir", str(nbs), "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "another machine" in proc.stderr
    assert not (tmp_path / "ran").exists()


def test_one_cpu_name_with_another_vector_extension_is_another_machine(tmp_path):
    """Two "AMD EPYC"s, one with AVX-512 and one with AVX2 only, ran the same training ~2x apart."""
    from cvhelpers.course.runner import MachineMismatchError, check_mergeable
    from cvhelpers.course.timeline import render_time_line
    from cvhelpers.env import machine_info

    here = machine_info()
    entry = {"notebook": "00_ok", "status": "passed", "seconds": 1.0}
    path = tmp_path / "results.json"
    for theirs in ("some_other_isa", None):  # a record written before the field existed counts as another
        path.write_text(json.dumps({"profile": "full", "machine": {**here, "vector_isa": theirs}, "notebooks": [entry]}))
        if theirs != here["vector_isa"]:
            with pytest.raises(MachineMismatchError, match="vector_isa"):
                check_mergeable(path, "full")
    record = {"profile": "full", "finished": "2026-01-01T00:00:00+00:00", "notebooks": [entry],
              "machine": {**here, "cpu": "AMD EPYC", "vector_isa": "avx2"}}
    assert "AMD EPYC, AVX2 only" in " ".join(render_time_line("00_ok", record, {"notebooks": []}).split())
    record["machine"].pop("vector_isa")
    assert "(AMD EPYC, no GPU)" in " ".join(render_time_line("00_ok", record, {"notebooks": []}).split())


def test_a_smoke_time_from_another_machine_names_that_machine():
    from cvhelpers.course.timeline import render_time_line

    avx2 = {"cpu": "AMD EPYC", "vector_isa": "avx2", "cores": 2, "gpu": None}
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "gpu": None}
    full = {"finished": "2026-01-01T00:00:00+00:00", "machine": xeon,
            "notebooks": [{"notebook": "06b", "status": "passed", "seconds": 466.0}]}
    smoke = {"machine": xeon, "notebooks": [{"notebook": "06b", "status": "passed", "seconds": 81.0, "machine": avx2}]}
    line = " ".join(render_time_line("06b", full, smoke).split())
    assert "smoke profile 81 s (on 2 cores, AMD EPYC, AVX2 only)." in line
    assert line.count("Xeon") == 1  # the full run's machine, named once
    same = {"machine": xeon, "notebooks": [{"notebook": "06b", "status": "passed", "seconds": 31.0}]}
    assert "smoke profile 31 s. GPU" in " ".join(render_time_line("06b", full, same).split())
