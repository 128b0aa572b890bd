"""Bad input, round 2 (issue 25): each mistake a new user makes ends as promised.

One table, one row per mistake: the command, its exit code, the one line it prints (the file,
key or row named, and the fix) -- and nothing written: the home folder (zoo, caches, the local
MLflow store), the reports folder and the tracking store are as they were. The rows whose input
can still give a report (a model without fine-tune results, one task, one model) end with one
warning line that the report repeats at its top. Below the table, the images a user's
ImageFolder may hold: 16-bit and float samples rescaled by their range, palette and alpha
converted explicitly.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from sweeps.cli import main

CONTROL = "models:\n  - {name: control, arch: cnn, arch_kwargs: {width: 4}, objective: none}\n" \
          "  - {name: broken, arch: cnn, arch_kwargs: {width: 4}, objective: none}\n"
GOOD = ("name: ok\nmodels: [control]\ntasks: [digits]\n"
        "probe: {proxies: [linear, knn], linear: {steps: 5, repeats: 1}}\n"
        "finetune: {profile: t, lrs: [0.01], head_steps: 2, steps: 3, batch_size: 16, repeats: 1}\n")


def _sweep(extra: str, name: str = "s") -> str:
    return f"name: {name}\nmodels: [control]\ntasks: [digits]\n{extra}\n"


def _records(models=("m0", "m1", "m2", "m3"), tasks=("t0", "t1", "t2"), no_finetune=(),
             header="model,task,metric,value", cell="", extra_rows=()) -> str:
    rng = np.random.default_rng(0)
    rows = [header]
    for m in models:
        for t in tasks:
            if m not in no_finetune:
                rows += [f"{m},{t},finetune_test_acc,{rng.uniform(0.5, 0.9):.3f}{cell}"] * 2
            rows.append(f"{m},{t},proxy/knn,{rng.uniform(0.3, 0.9):.3f}{cell}")
    return "\n".join([*rows, *extra_rows]) + "\n"


def _too_many_trials() -> str:
    from lightning_modules.tasks import list_tasks

    models = ", ".join(f"local:hub/m{i}" for i in range(30))
    tasks = ", ".join(list_tasks(kind="vtab"))
    lrs = ", ".join(f"{0.001 * (i + 1):g}" for i in range(20))
    return (f"name: huge\nmodels: [{models}]\ntasks: [{tasks}]\n"
            f"finetune: {{lrs: [{lrs}], repeats: 100, trials: per_run}}\n")


def _alias_bomb() -> str:
    lines = ["name: s", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    return "\n".join(lines) + "\n"


def _truncated_folder(root: Path) -> None:
    """An ImageFolder of 8-px images (enough for 800/200) whose one test image is cut short."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 500), ("test", 3)):
        for label in ("a", "b"):
            folder = root / "mine" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(folder / f"{i}.png")
    png = root / "mine" / "test" / "b" / "2.png"
    big = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(big, format="PNG")
    png.write_bytes(big.getvalue()[:len(big.getvalue()) // 2])


@dataclass
class Case:
    id: str
    argv: list[str]
    says: list[str]  # fragments of the one line
    files: dict[str, str] = field(default_factory=dict)
    rc: int = 2
    setup: object = None  # fn(case folder)


ERR = "whichmodel: error: "
CASES = [
    # -- a path escape ------------------------------------------------------------------------
    Case("experiment_escapes_the_home_folder", ["run", "{d}/s.yaml", "--reports-dir", "{r}"],
         ["s.yaml: key 'tracking.experiment': '../../escaped_exp' would leave its folder"],
         {"s.yaml": _sweep('tracking: {experiment: "../../escaped_exp"}')}),
    Case("report_experiment_escapes_the_reports_folder",
         ["report", "--experiment", "../../escaped_exp", "--reports-dir", "{r}"],
         ["--experiment: '../../escaped_exp' would leave its folder"]),
    Case("resume_argument_escapes", ["resume", "../../../etc/passwd"],
         ["resume: '../../../etc/passwd' would leave its folder"]),
    Case("sweep_name_too_long", ["validate", "--file-only", "{d}/s.yaml"],
         ["key 'name'", "is 150 characters long (at most 100)"], {"s.yaml": _sweep("", "x" * 150)}),
    Case("task_name_with_nul", ["validate", "--file-only", "{d}/s.yaml"],
         ["key 'tasks[0].name'", "holds a NUL character"],
         {"s.yaml": 'name: s\nmodels: [control]\ntasks: [{name: "a\\0b", path: d, group: natural}]\n'}),
    Case("pool_name_escapes", ["validate", "--file-only", "{d}/s.yaml"],
         ["key 'pools.../p'", "would leave its folder"], {"s.yaml": _sweep("pools: {'../p': all}")}),
    # -- unbounded values ---------------------------------------------------------------------
    Case("finetune_steps_unbounded", ["validate", "{d}/s.yaml"],
         ["key 'finetune.steps': Input should be less than or equal to 1000000, got 1000000000000",
          "the paper's is 2,500"], {"s.yaml": _sweep("finetune: {steps: 1000000000000}")}),
    Case("repeats_unbounded_per_run", ["validate", "{d}/s.yaml"],
         ["key 'finetune.repeats'", "got 1000000000000", "the paper takes the median of 5"],
         {"s.yaml": _sweep("finetune: {repeats: 1000000000000, trials: per_run}")}),
    Case("plan_over_a_million_trials", ["validate", "--file-only", "{d}/s.yaml"],
         ["s.yaml: the plan has 1,140,570 trials, more than 1,000,000: split it"],
         {"s.yaml": _too_many_trials()}),
    Case("batch_size_unbounded", ["validate", "{d}/s.yaml"],
         ["key 'finetune.batch_size'", "got 10000000", "a larger batch fits no device"],
         {"s.yaml": _sweep("finetune: {batch_size: 10000000}")}),
    Case("learning_rate_infinite", ["validate", "{d}/s.yaml"],
         ["key 'finetune.lrs[1]': Input should be a finite number"],
         {"s.yaml": _sweep("finetune: {lrs: [0.01, .inf]}")}),
    Case("yaml_nested_3000_deep", ["validate", "{d}/s.yaml"],
         ["s.yaml: line 2: nested deeper than 32 levels"],
         {"s.yaml": "name: s\ntasks: " + "[" * 3000 + "]" * 3000 + "\n"}),
    Case("yaml_larger_than_a_mebibyte", ["validate", "{d}/s.yaml"],
         ["s.yaml: larger than 1024 KiB"], {"s.yaml": "name: s\n" + "#" * (1 << 20) + "\n"}),
    Case("yaml_alias_bomb", ["validate", "{d}/s.yaml"],
         ["more than 100,000 values once its aliases"], {"s.yaml": _alias_bomb()}),
    Case("finetune_steps_zero", ["run", "{d}/s.yaml", "--reports-dir", "{r}"],
         ["key 'finetune.steps'", "got 0", "0 fine-tunes nothing (trainable: head"],
         {"s.yaml": _sweep("finetune: {steps: 0}")}),
    # -- caught before work starts ------------------------------------------------------------
    Case("unknown_report_strategy", ["validate", "{d}/s.yaml"],
         ["key 'report.strategies[1]': unknown strategy 'proxy/linaer'; this sweep's report has:"],
         {"s.yaml": _sweep("report: {strategies: [task_agnostic, proxy/linaer]}")}),
    Case("unknown_delta_strategy", ["validate", "{d}/s.yaml"],
         ["key 'report.deltas[0]': unknown strategy 'proxy/nope'"],
         {"s.yaml": _sweep("report: {deltas: ['proxy/knn vs proxy/nope']}")}),
    Case("static_ranking_no_model_can_read", ["run", "{d}/s.yaml", "--reports-dir", "{r}"],
         ["key 'report.strategies[0]': 'static:imagenet_acc': no model of this sweep has"],
         {"s.yaml": _sweep("report: {strategies: [static:imagenet_acc]}")}),
    Case("pool_rule_misspelled_key", ["validate", "{d}/s.yaml"],
         ["key 'pools.small.rule': rule 'paramz <= 1.0e6' reads 'paramz', which no model's "
          "metadata has; keys that exist: arch, feature_dim"],
         {"s.yaml": _sweep("pools: {small: {rule: 'paramz <= 1.0e6'}}")}),
    Case("catalog_pool_rule_misspelled_key", ["validate", "--file-only", "{d}/s.yaml"],
         ["c.yaml: key 'pools.p.rule': rule 'imagenet_accc' reads 'imagenet_accc'"],
         {"s.yaml": "name: s\ncatalog: c.yaml\ntasks: [digits]\n",
          "c.yaml": "models:\n  - {name: r, spec: 'timm:resnet18', meta: {imagenet_acc: 0.7}}\n"
                    "pools:\n  p: {rule: imagenet_accc}\n"}),
    Case("yaml_key_given_twice", ["validate", "{d}/s.yaml"],
         ["s.yaml: key 'finetune.steps' given twice, at line 6 and line 7"],
         {"s.yaml": _sweep("finetune:\n  lrs: [0.01]\n  steps: 5\n  steps: 50")}),
    Case("nan_checkpoint_validate", ["validate", "{d}/s.yaml"],
         ["zoo/broken/model.safetensors: weights are not finite: 'body.block1.0.weight' holds "
          "NaN or inf in 108 of its 108 values"],
         {"s.yaml": "name: s\nmodels: [broken]\ntasks: [digits]\n"}),
    Case("nan_checkpoint_run", ["run", "{d}/s.yaml", "--reports-dir", "{r}"],
         ["zoo/broken/model.safetensors: weights are not finite"],
         {"s.yaml": "name: s\nmodels: [broken]\ntasks: [digits]\n"}),
    # -- bad data read silently -----------------------------------------------------------------
    Case("records_second_value_column", ["report", "--records", "{d}/r.csv", "--reports-dir", "{r}"],
         ["r.csv: line 1: column 'value' appears twice (columns 4 and 5); keep one"],
         {"r.csv": _records(header="model,task,metric,value,value", cell=",0.1")}),
    Case("records_extra_column", ["report", "--records", "{d}/r.csv", "--reports-dir", "{r}"],
         ["r.csv: line 1: unknown column 'unit'; a records file has the columns model, task, "
          "metric, value"], {"r.csv": _records(header="model,task,metric,value,unit", cell=",x")}),
    Case("records_row_with_an_extra_field",
         ["report", "--records", "{d}/r.csv", "--reports-dir", "{r}"],
         ["r.csv: line 38: 5 fields, the header has 4; a value holding a comma needs quotes"],
         {"r.csv": _records(extra_rows=["m0,t0,finetune_test_acc,0,5"])}),
    Case("models_csv_duplicate_column",
         ["report", "--records", "{d}/r.csv", "--models", "{d}/m.csv", "--reports-dir", "{r}"],
         ["m.csv: line 1: column 'params' appears twice"],
         {"r.csv": _records(), "m.csv": "model,params,params\nm0,1,2\n"}),
    Case("records_errors_are_one_line",
         ["report", "--records", "{d}/r.csv", "--reports-dir", "{r}"],
         ["r.csv: line 38 (model='m0', task='t0', metric='finetune_test_acc'): accuracy '87' is "
          "outside [0, 1]", "(and 2 more invalid value(s) after it)"],
         {"r.csv": _records(extra_rows=["m0,t0,finetune_test_acc,87", "m0,t1,finetune_test_acc,88",
                                        "m1,t1,proxy/knn,abc"])}),
    Case("inf_accuracy_reported_once", ["report", "--records", "{d}/r.csv", "--reports-dir", "{r}"],
         ["line 38 (model='m0', task='t0', metric='finetune_test_acc'): value 'inf' is not a "
          "finite number"], {"r.csv": _records(extra_rows=["m0,t0,finetune_test_acc,inf"])}),
    Case("report_budget_zero",
         ["report", "--records", "{d}/r.csv", "--budget", "0", "--reports-dir", "{r}"],
         ["--budget 0: the largest budget B to report, an integer of 1 or more"],
         {"r.csv": _records()}),
    Case("model_without_finetune_results",
         ["report", "--records", "{d}/r.csv", "--reports-dir", "{r}"],
         ["1 of the pool's 4 models ('m3') have no 'finetune_test_acc' on any task"],
         {"r.csv": _records(no_finetune=("m3",))}, rc=0),
    Case("single_task", ["report", "--records", "{d}/r.csv", "--reports-dir", "{r}"],
         ["one task ('t0'): the intervals resample tasks"], {"r.csv": _records(tasks=("t0",))},
         rc=0),
    Case("single_model", ["report", "--records", "{d}/r.csv", "--reports-dir", "{r}"],
         ["one model with fine-tune results ('m0'): every strategy picks it and every regret is 0"],
         {"r.csv": _records(models=("m0",))}, rc=0),
    Case("truncated_png_named_by_its_path",
         ["recommend", "--task", "{d}/mine", "--budget", "1", "--config", "{d}/s.yaml",
          "--no-finetune"],
         ["cannot decode {d}/mine/test/b/2.png: image file is truncated; replace or remove"],
         {"s.yaml": GOOD}, setup=_truncated_folder),
    Case("submit_to_an_ftp_address",
         ["submit", "{d}/s.yaml", "--address", "ftp://head:8265", "--working-dir", "{d}"],
         ["--address 'ftp://head:8265': Ray's Jobs API does not speak ftp://"], {"s.yaml": GOOD}),
]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A home with two built zoo models, 'control' and 'broken' (its weights all NaN), and the
    digits task cached."""
    import torch
    from safetensors.torch import load_file, save_file

    from lightning_modules.offline import build_suite
    from sweeps.trials import build_model
    from sweeps.zoo_config import load_zoo_config

    root = tmp_path_factory.mktemp("bad-input")
    (root / "zoo.yaml").write_text(CONTROL)
    zoo, home = load_zoo_config(root / "zoo.yaml"), root / "home"
    for name in ("control", "broken"):
        build_model(zoo, name, home / "zoo", home / "data")
    weights = home / "zoo" / "broken" / "model.safetensors"
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in load_file(str(weights)).items()}, str(weights))
    build_suite(home / "data", ["digits"], image_size=32, seed=0)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, world, tmp_path, monkeypatch,
                                                         capsys):
    home, reports = world / "home", tmp_path / "reports"
    monkeypatch.setenv("WHICHMODEL_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo.yaml").write_text(CONTROL)
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    if case.setup:
        case.setup(tmp_path)
    before = _files(home)
    argv = [a.format(d=tmp_path, r=reports) for a in case.argv]
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    says = [s.format(d=tmp_path) for s in case.says]
    assert rc == case.rc, err
    assert _files(home) == before  # no zoo, cache, MLflow store or run written
    assert not (home / "mlflow.db").exists()
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith(ERR), err
        for fragment in says:
            assert fragment in lines[0], lines[0]
        assert not reports.exists()
        return
    # a report it can compute but says little about: one warning line, repeated at its top
    warnings = [line for line in lines if line.startswith("whichmodel: warning: ")]
    assert len(warnings) == 1 and all(f in warnings[0] for f in says), err
    text = warnings[0].removeprefix("whichmodel: warning: ")
    md = (reports / "r" / "regret.md").read_text().splitlines()
    assert md[2] == f"**Warning:** {text}."
    page = (reports / "r" / "report.html").read_text()
    assert f"<h1>whichmodel report: all</h1>\n<p><b>Warning:</b> {html.escape(text)}.</p>" in page
    leaderboard = out[out.index("warning: "):]
    assert leaderboard.startswith("warning: " + text[:60])


def test_a_table_with_at_least_the_issues_28_cases():
    assert len(CASES) >= 28 and len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------------ images
def _png(array: np.ndarray, mode: str | None = None):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    buffer.seek(0)
    return Image.open(buffer)


def test_a_16_bit_png_is_rescaled_by_its_range_not_clipped():
    from lightning_modules.imagefolder import to_array

    grey = (np.random.default_rng(0).random((32, 32)) * 65535 * 0.54).astype(np.uint16)
    image = _png(grey)
    assert image.mode.startswith("I;16")
    out = to_array(image, 32)
    expected = np.rint(grey / 65535 * 255)
    assert np.abs(out[..., 0] - expected).max() <= 1  # resized to its own size: the same pixels
    assert (out == 255).mean() == 0 and abs(out.mean() - grey.mean() / 65535 * 255) < 0.5
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_float_and_wide_integer_images_are_rescaled_by_their_range():
    from PIL import Image

    from lightning_modules.imagefolder import to_rgb

    unit = Image.fromarray(np.full((4, 4), 0.5, np.float32), "F")
    assert np.asarray(to_rgb(unit))[0, 0].tolist() == [128, 128, 128]
    wide = Image.fromarray(np.array([[-1000, 3000]], np.int32), "I")  # beyond 16 bits: its own
    assert np.asarray(to_rgb(wide))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_palette_and_alpha_images_are_converted_explicitly():
    from PIL import Image

    from lightning_modules.imagefolder import to_rgb

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 1  # index 1 (green) is transparent
    assert np.asarray(to_rgb(palette))[0].tolist() == [[255, 0, 0], [0, 0, 0]]
    half = Image.fromarray(np.array([[[200, 100, 50, 128]]], np.uint8), "RGBA")
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [100, 50, 25]  # over black
    grey_alpha = Image.fromarray(np.array([[[200, 255]]], np.uint8), "LA")
    assert np.asarray(to_rgb(grey_alpha))[0, 0].tolist() == [200, 200, 200]
