"""Public records tables shipped with whichmodel, read by name: ``public:<name>``.

    whichmodel report --records public:logme11
    whichmodel benchmark-proxies --records public:all

A table is ``<name>_records.csv`` (long ``model,task,metric,value``, the records format) and,
where the sources publish model metadata, ``<name>_models.csv`` in this package's folder; the
``README.md`` beside them says where every number comes from. They are package data
(``setup.cfg``), so a name resolves the same from an installed whichmodel as from a checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from whichmodel.errors import WhichModelError

PREFIX = "public:"
ALL = "all"
_RECORDS = "_records.csv"


@dataclass(frozen=True)
class PublicTable:
    """One shipped table: its name, records file and model metadata file (None: none)."""

    name: str
    records: Path
    models: Path | None


def folder() -> Path:
    return Path(__file__).resolve().parent


def list_tables() -> list[str]:
    """The shipped tables' names, sorted."""
    return sorted(p.name[:-len(_RECORDS)] for p in folder().glob(f"*{_RECORDS}"))


def get_table(name: str) -> PublicTable:
    if name not in list_tables():
        raise WhichModelError(f"{PREFIX}{name}: no such public table; known: "
                              f"{', '.join(PREFIX + n for n in [ALL, *list_tables()])}")
    models = folder() / f"{name}_models.csv"
    return PublicTable(name, folder() / f"{name}{_RECORDS}", models if models.is_file() else None)


def is_public(ref: object) -> bool:
    return str(ref).startswith(PREFIX)


def resolve(ref: str) -> list[PublicTable]:
    """``public:all`` -> every shipped table; ``public:<name>`` -> that one."""
    name = str(ref)[len(PREFIX):]
    return [get_table(n) for n in list_tables()] if name == ALL else [get_table(name)]


def records_source(ref: str | Path, models: str | Path | None = None
                   ) -> tuple[Path, Path | None, str]:
    """(records file, model metadata file, a name for the report's folder) of ``--records REF``:
    a file, or one public table (its metadata unless ``models`` is given)."""
    if not is_public(ref):
        return Path(ref), Path(models) if models else None, Path(ref).stem
    tables = resolve(str(ref))
    if len(tables) != 1:
        raise WhichModelError(f"--records {ref}: a report reads one table; name one of "
                              f"{', '.join(PREFIX + n for n in list_tables())} (whichmodel "
                              "benchmark-proxies reads them all)")
    table = tables[0]
    return table.records, Path(models) if models else table.models, table.name
