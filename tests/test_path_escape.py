"""No name becomes a path outside whichmodel's folders (issue 25).

Every place a user names something that becomes part of a path -- the sweep, its MLflow
experiment, a task, a model (a sweep's entry, a zoo file's), a pool, ``whichmodel resume NAME``,
``report --experiment`` and the report folder a records file names -- is tried with ``..``, an
absolute path, a NUL character and a very long name. Each is refused (one line, exit code 2), and
no file appears anywhere outside ``$WHICHMODEL_HOME`` (which holds the tracking store) and the
reports folder; the absolute path is not created. :func:`whichmodel.names.within`, which every
writer of a named path goes through, refuses a path that resolves outside its folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.cli import main

ZOO = "models:\n  - {name: control, arch: cnn, arch_kwargs: {width: 4}, objective: none}\n"
KINDS = ("dotdot", "absolute", "nul", "long")


def _name(kind: str, box: Path) -> str:
    return {"dotdot": "../../escaped", "absolute": str(box / "abs_escaped"),
            "nul": "bad\x00name", "long": "x" * 300}[kind]


def _yaml(name: str) -> str:
    """The name as a double-quoted YAML scalar (NUL written as its escape)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\0") + '"'


def _sweep(work: Path, place: str, name: str) -> list[str]:
    q = _yaml(name)
    body = {
        "sweep": f"name: {q}\nmodels: [control]\ntasks: [digits]\n",
        "experiment": f"name: s\nmodels: [control]\ntasks: [digits]\ntracking: {{experiment: {q}}}\n",
        "task": f"name: s\nmodels: [control]\ntasks: [{{name: {q}, path: data, group: natural}}]\n",
        "model": f"name: s\nmodels: [{{name: {q}, spec: 'local:m'}}]\ntasks: [digits]\n",
        "pool": f"name: s\nmodels: [control]\ntasks: [digits]\npools: {{{q}: all}}\n",
        "zoo_model": "name: s\nzoo: zoo2.yaml\nmodels: all\ntasks: [digits]\n",
    }[place]
    (work / "zoo2.yaml").write_text(f"models:\n  - {{name: {q}, arch: cnn, objective: none}}\n")
    (work / "s.yaml").write_text(body)
    return ["run", str(work / "s.yaml"), "--reports-dir", str(work / "reports")]


def _argv(work: Path, place: str, name: str) -> list[str]:
    if place == "resume":
        return ["resume", name]
    if place == "report_experiment":
        return ["report", "--experiment", name, "--reports-dir", str(work / "reports")]
    if place == "report_records":  # the folder is the file's name
        stem = "." if name.startswith("..") else name[:150]
        (work / f"{stem}.csv").write_text("model,task,metric,value\na,t,finetune_test_acc,0.5\n")
        return ["report", "--records", str(work / f"{stem}.csv"), "--reports-dir",
                str(work / "reports")]
    if place == "recommend_task":  # the task is named after its folder
        folder = work / ("x" * 150)
        (folder / "train" / "a").mkdir(parents=True)
        return ["recommend", "--task", str(folder), "--budget", "1", "--config",
                str(work / "good.yaml")]
    return _sweep(work, place, name)


PLACES = ("sweep", "experiment", "task", "model", "zoo_model", "pool", "resume",
          "report_experiment")
# A file's or folder's name holds no separator and no NUL: the report folder a records file
# names and a recommend task's folder are tried with what a file name can hold.
CASES = [(p, k) for p in PLACES for k in KINDS] + [
    ("report_records", "dotdot"), ("report_records", "long"), ("recommend_task", "long")]


def _outside(root: Path, work: Path) -> dict[str, int]:
    allowed = (work / "home", work / "reports")
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if not any(a == p or a in p.parents for a in allowed)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from sweeps.trials import build_model
    from sweeps.zoo_config import load_zoo_config

    root = tmp_path_factory.mktemp("escape-zoo")
    (root / "zoo.yaml").write_text(ZOO)
    build_model(load_zoo_config(root / "zoo.yaml"), "control", root / "zoo", root / "data")
    return root / "zoo"


@pytest.mark.parametrize("place, kind", CASES)
def test_a_name_that_would_leave_its_folder_is_refused_and_nothing_is_written_outside(
        place, kind, built, tmp_path, monkeypatch, capsys):
    import shutil

    box = tmp_path / "a" / "b"
    work = box / "work"
    (work / "home").mkdir(parents=True)
    shutil.copytree(built, work / "home" / "zoo")
    (work / "zoo.yaml").write_text(ZOO)
    (work / "good.yaml").write_text("name: good\nmodels: [control]\ntasks: [digits]\n")
    monkeypatch.setenv("WHICHMODEL_HOME", str(work / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(work)
    name = _name(kind, box)
    argv = _argv(work, place, name)
    before = _outside(tmp_path, work)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("whichmodel: error: "), err
    assert _outside(tmp_path, work) == before
    assert not (box / "abs_escaped").exists()
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.rglob("abs_escaped*"))


def test_within_refuses_paths_that_resolve_outside_the_folder(tmp_path):
    from whichmodel.names import BadNameError, within

    root = tmp_path / "root"
    root.mkdir()
    assert within(root, "a", "b.json") == (root / "a" / "b.json").resolve()
    for parts in (("..", "x"), ("a/../../x",), (str(tmp_path / "x"),), ("a\x00b",)):
        with pytest.raises(BadNameError, match="would leave the folder"):
            within(root, *parts)
    (root / "link").symlink_to(tmp_path)  # a link inside that points outside
    with pytest.raises(BadNameError, match="outside that folder"):
        within(root, "link", "x.json")


@pytest.mark.parametrize("name, why", [
    ("", "is empty"), ("..", "would leave its folder"), ("a/b", "would leave its folder"),
    (".hidden", "would leave its folder"), ("a\x00b", "holds a NUL character"),
    ("x" * 101, "is 101 characters long (at most 100)"), ("a b", "holds a character other than"),
])
def test_check_name_names_what_is_wrong(name, why):
    from whichmodel.names import BadNameError, check_name

    with pytest.raises(BadNameError) as err:
        check_name(name, "key 'name'")
    assert str(err.value).startswith("key 'name': ") and why in str(err.value)
    assert "\n" not in str(err.value)
    assert check_name("resnet50.a1_in1k", "x") == "resnet50.a1_in1k"
