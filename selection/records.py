"""Records: the long table of measurements that every selection step reads.

One measurement a row, columns ``model, task, metric, value`` (README, "Records format"):

- ``finetune_test_acc`` is the ground truth s(m, t): the fine-tuned model's test accuracy;
- ``finetune_val_acc`` is also an accuracy (the validation accuracy that picked the run);
- metrics starting with ``proxy/`` (``proxy/linear``, ``proxy/knn``, ``proxy/logme`` ...) are
  proxy scores, higher is better.

Accuracies are fractions in [0, 1]. A value outside that range is an error, never silently
rescaled: 87.5 could be a percentage or a bug, and only the producer knows which.

Repeated rows of one (model, task, metric) -- e.g. the 5 repetitions of a fine-tune -- are
aggregated by their median (:func:`aggregate_records`).

Model metadata (for task-agnostic ranking and named pools) is a second CSV with a ``model``
column and any of ``imagenet_acc`` (a fraction in [0, 1]), ``upstream_size``, ``params``,
``feature_dim`` and ``pools``
(``;``-separated pool names), read by :func:`read_models_csv`.

Errors are :class:`RecordsError`, one line: the source, the first offending CSV line (data row
i, counted from 0, is line i + 2 because of the header), its value, how to fix it, and how many
more problems of the kind there are. A file whose header names a column twice, or a column the
table does not have, is refused (pandas would rename a second ``value`` to ``value.1`` and the
table would silently read the first).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from whichmodel.accuracy import ACCURACY_RULE, accuracy_out_of_range
from whichmodel.errors import WhichModelError

REQUIRED_COLUMNS: tuple[str, ...] = ("model", "task", "metric", "value")
GROUND_TRUTH = "finetune_test_acc"
VALIDATION_ACC = "finetune_val_acc"
PROXY_PREFIX = "proxy/"
METADATA_NUMERIC: tuple[str, ...] = ("imagenet_acc", "upstream_size", "params", "feature_dim")
METADATA_POOLS = "pools"
POOL_ALL = "all"



class RecordsError(WhichModelError, ValueError):
    """A records or model-metadata table is malformed; the message says where and how to fix it."""


def is_accuracy_metric(metric: str) -> bool:
    """True for metrics that are accuracies and therefore must lie in [0, 1].

    ``finetune_test_acc``, ``finetune_val_acc`` and any metric whose last ``/``-separated
    component ends in ``acc`` (``val/acc``, ``proxy/linear_acc``).
    """
    return metric in (GROUND_TRUTH, VALIDATION_ACC) or metric.rsplit("/", 1)[-1].endswith("acc")


def _raise_problems(source: str, problems: list[str], what: str) -> None:
    """One line: the first problem (they come in file order) and how many more there are."""
    if not problems:
        return
    more = (f" (and {len(problems) - 1} more invalid {what} after it)" if len(problems) > 1
            else "")
    raise RecordsError(f"{source}: {problems[0]}{more}")


def _require_columns(df: pd.DataFrame, source: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise RecordsError(
            f"{source}: expected a pandas DataFrame with columns {', '.join(REQUIRED_COLUMNS)}, "
            f"got {type(df).__name__}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RecordsError(
            f"{source}: missing column(s) {', '.join(missing)}; a records table has the header "
            f"'model,task,metric,value' (one measurement a row); found columns {list(df.columns)}"
        )


def _string_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "is not a string"
    if not value.strip():
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace; remove it"
    return None


def _validate(df: pd.DataFrame, source: str, lines: Sequence[int]) -> pd.DataFrame:
    out = df.reset_index(drop=True).copy()
    problems: list[str] = []
    for col in ("model", "task", "metric"):
        for i, v in enumerate(out[col].tolist()):
            why = _string_problem(v)
            if why is not None:
                problems.append(f"line {lines[i]}: {col} {v!r} {why}; every row needs a model, task and metric name")
    _raise_problems(source, problems, "name(s)")

    raw = out["value"].tolist()
    values = pd.to_numeric(out["value"], errors="coerce").astype(float).to_numpy()

    def where(i: int) -> str:
        return f"(model={out['model'].iat[i]!r}, task={out['task'].iat[i]!r}, metric={out['metric'].iat[i]!r})"

    found: list[tuple[int, str]] = []
    for i in np.flatnonzero(~np.isfinite(values)):
        found.append((i, f"line {lines[i]} {where(i)}: value {raw[i]!r} is not a finite number; "
                         "every value must be a finite number (no empty field, NaN, inf or text)"))
    is_acc = np.array([is_accuracy_metric(m) for m in out["metric"]], dtype=bool)
    # a non-finite accuracy is reported once, above, not also as out of range
    for i in np.flatnonzero(is_acc & np.isfinite(values) & accuracy_out_of_range(values)):
        found.append((i, f"line {lines[i]} {where(i)}: accuracy {raw[i]!r} is outside [0, 1]; "
                         f"{ACCURACY_RULE}"))
    _raise_problems(source, [msg for _, msg in sorted(found)], "value(s)")

    out["value"] = values
    return out


def validate_records(df: pd.DataFrame, source: str = "records") -> pd.DataFrame:
    """Check a records table and return a clean copy (default index, float ``value``).

    Checks: the columns ``model, task, metric, value`` exist; model/task/metric are non-empty
    strings without surrounding whitespace; every value is a finite number; accuracy metrics
    (:func:`is_accuracy_metric`) lie in [0, 1]. Extra columns are kept.

    Raises :class:`RecordsError` naming ``source``, the CSV line of each bad row (data row i is
    line i + 2) and its value.
    """
    _require_columns(df, source)
    return _validate(df, source, [i + 2 for i in range(len(df))])


def read_csv_rows(path: str | Path, what: str, header_hint: str,
                  columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[int]]:
    """The one CSV preamble of records and models files: the rows as strings (wholly blank lines
    dropped) and each row's line number in the file; :class:`RecordsError` naming the file and
    the expected header when it is missing, empty or not a readable CSV, names a column twice,
    or (with ``columns``, the columns such a file may have) names another column."""
    path = Path(path)
    if not path.is_file():
        raise RecordsError(f"{path}: no such {what} file; pass a CSV with {header_hint}")
    _check_header(path, what, columns)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise RecordsError(f"{path}: the file is empty; expected {header_hint}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise RecordsError(f"{path}: not a readable CSV ({' '.join(str(exc).split())}); expected "
                           f"{header_hint}") from exc
    lines = np.arange(len(df)) + 2
    blank = df.apply(lambda col: col.isna() | (col.astype(str) == "")).all(axis=1).to_numpy()
    return df.loc[~blank].reset_index(drop=True), lines[~blank].tolist()


def _check_header(path: Path, what: str, columns: Sequence[str] | None) -> None:
    """The header names each column once (and only ``columns``), and every row has as many
    fields as the header (pandas would take a longer row's first field as its index)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return  # pandas names what is wrong with the file
    header = rows[0] if rows else []
    ragged = [(n, len(r)) for n, r in enumerate(rows[1:], start=2)
              if len(r) != len(header) and any(c.strip() for c in r)]
    if header and ragged:
        (line, fields), more = ragged[0], len(ragged) - 1
        raise RecordsError(f"{path}: line {line}: {fields} fields, the header has "
                           f"{len(header)}" + (f" (and {more} more such lines)" if more else "")
                           + "; a value holding a comma needs quotes")
    names = [h.strip() for h in header]
    for j, name in enumerate(names):
        if name and name in names[:j]:
            raise RecordsError(f"{path}: line 1: column {name!r} appears twice (columns "
                               f"{names.index(name) + 1} and {j + 1}); keep one")
    if columns is not None:
        extra = [n for n in names if n and n not in columns]
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise RecordsError(f"{path}: line 1: unknown column {extra[0]!r}{more}; a {what} "
                               f"file has the columns {', '.join(columns)}, and nothing else "
                               "would be read: remove it")


def read_records_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate a long records CSV (header ``model,task,metric,value``).

    Line numbers in errors are the file's own line numbers; wholly blank lines are ignored.
    """
    df, lines = read_csv_rows(path, "records", "the header line model,task,metric,value",
                              REQUIRED_COLUMNS)
    _require_columns(df, str(path))
    return _validate(df, str(path), lines)


def aggregate_records(df: pd.DataFrame) -> pd.DataFrame:
    """Median over repeated rows of one (model, task, metric); columns model, task, metric, value.

    Expects a validated table (:func:`validate_records`); extra columns are dropped.
    """
    _require_columns(df, "records")
    grouped = df.groupby(["model", "task", "metric"], sort=True, as_index=False)["value"].median()
    return grouped.reset_index(drop=True)


def pivot_metric(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric as a table: index = model, columns = task, NaN where a pair has no value.

    The index and columns cover every model and task of ``df`` (sorted), so pivots of different
    metrics align. Repeated rows are aggregated by median. Raises :class:`RecordsError` when the
    metric has no row at all (almost always a misspelt name).
    """
    _require_columns(df, "records")
    rows = df[df["metric"] == metric]
    if rows.empty:
        present = sorted(df["metric"].unique().tolist())
        raise RecordsError(f"records: no rows for metric {metric!r}; metrics present: {present}")
    table = rows.pivot_table(index="model", columns="task", values="value", aggfunc="median")
    table = table.reindex(index=sorted(df["model"].unique()), columns=sorted(df["task"].unique()))
    table.index.name = "model"
    table.columns.name = "task"
    return table.astype(float)


def list_proxy_metrics(df: pd.DataFrame) -> list[str]:
    """Sorted names of the proxy metrics in a records table (those starting with ``proxy/``)."""
    _require_columns(df, "records")
    return sorted(m for m in df["metric"].unique().tolist() if isinstance(m, str) and m.startswith(PROXY_PREFIX))


def read_models_csv(path: str | Path) -> pd.DataFrame:
    """Read model metadata: index = model; numeric ``imagenet_acc``, ``upstream_size``, ``params``
    (NaN where empty); ``pools`` kept as its ``;``-separated text (:func:`selection.pools.pool_tags`
    reads it).

    Raises :class:`RecordsError` for a missing ``model`` column, a column named twice or one
    nothing reads, an empty or duplicate model name, or a non-numeric value, naming the line.
    """
    source = str(path)
    df, lines = read_csv_rows(path, "model metadata",
                              "a header line starting with 'model' (a 'model' column)",
                              ("model", *METADATA_NUMERIC, METADATA_POOLS))
    if "model" not in df.columns:
        raise RecordsError(
            f"{source}: no 'model' column; model metadata needs a 'model' column and any of "
            f"{', '.join(METADATA_NUMERIC)}, {METADATA_POOLS}; found columns {list(df.columns)}"
        )

    problems: list[str] = []
    first_line: dict[str, int] = {}
    for i, m in enumerate(df["model"].tolist()):
        why = _string_problem(m)
        if why is not None:
            problems.append(f"line {lines[i]}: model {m!r} {why}")
        elif m in first_line:
            problems.append(
                f"line {lines[i]}: duplicate model {m!r} (first on line {first_line[m]}); "
                "list each model once"
            )
        else:
            first_line[m] = lines[i]
    _raise_problems(source, problems, "model row(s)")

    out = df.copy()
    for col in METADATA_NUMERIC:
        if col not in out.columns:
            continue
        raw = out[col].fillna("").astype(str).str.strip()
        values = pd.to_numeric(raw.replace("", np.nan), errors="coerce").astype(float)
        for i in np.flatnonzero((raw != "").to_numpy() & ~np.isfinite(values.to_numpy())):
            problems.append(
                f"line {lines[i]} (model={out['model'].iloc[i]!r}): {col} {raw.iloc[i]!r} is not a "
                "finite number; leave the field empty when unknown"
            )
        if is_accuracy_metric(col):
            for i in np.flatnonzero(accuracy_out_of_range(values.to_numpy())):
                problems.append(f"line {lines[i]} (model={out['model'].iloc[i]!r}): {col} "
                                f"{raw.iloc[i]!r} is outside [0, 1]; {ACCURACY_RULE}")
        out[col] = values
    _raise_problems(source, problems, "metadata value(s)")
    if METADATA_POOLS in out.columns:  # ';'-separated pool names, read by selection.pools.pool_tags
        out[METADATA_POOLS] = out[METADATA_POOLS].fillna("").astype(str).str.strip()
    return out.set_index("model")


def index_metadata(metadata: pd.DataFrame | None, source: str = "metadata") -> pd.DataFrame | None:
    """Model metadata indexed by model name (accepts a ``model`` column or a model index)."""
    if metadata is None:
        return None
    if not isinstance(metadata, pd.DataFrame):
        raise RecordsError(f"{source}: expected a pandas DataFrame of model metadata, got {type(metadata).__name__}")
    if "model" in metadata.columns:
        metadata = metadata.set_index("model")
    if metadata.index.has_duplicates:
        dup = sorted(set(metadata.index[metadata.index.duplicated()].astype(str)))
        raise RecordsError(f"{source}: duplicate model(s) {dup}; list each model once")
    return metadata


def targets_from_records(records: pd.DataFrame) -> pd.DataFrame:
    """Fine-tune test accuracy (index model, columns task, NaN = missing pair) from a long records
    table: validated, repeated rows aggregated by median (ChoiceNet's targets)."""
    return pivot_metric(aggregate_records(validate_records(records)), GROUND_TRUTH)
