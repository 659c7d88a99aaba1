"""File helpers shared by the data commands: fast, checked CSV/Parquet/JSONL I/O (written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from libra_cli.atomic import atomic_path
from libra_cli.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

TABLE_SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".parquet")


def table_format(path: Path) -> str:
    """Name the format of ``path`` from its suffix (csv, jsonl or parquet), or explain what is allowed."""
    name = Path(path).name.lower()
    for fmt in ("csv", "jsonl", "parquet"):
        if name.endswith(f".{fmt}") or (fmt != "parquet" and name.endswith(f".{fmt}.gz")):
            return fmt
    raise InputError(f"cannot tell the format of '{path}'; name it *.csv, *.csv.gz, *.jsonl, *.jsonl.gz or *.parquet")


def check_readable(path: Path, what: str) -> Path:
    """Fail with one line when an input file is missing, instead of a deep pyarrow error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} '{path}' does not exist; check the path")
    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder; give the CSV file itself")
    return path


def read_csv_columns(
    path: Path,
    what: str,
    required: dict[str, Any],
    optional: dict[str, Any] | None = None,
) -> pa.Table:
    """Read only the needed columns of a (possibly gzipped) CSV with pyarrow, typed and checked.

    ``required``/``optional`` map column name -> pyarrow type. Missing required columns, a broken
    gzip stream or a value that does not parse all become one-line :class:`InputError`s.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    check_readable(path, what)
    optional = optional or {}
    wanted = {**required, **optional}
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=8 << 20),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(wanted),
                include_missing_columns=True,
                column_types=wanted,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError, EOFError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {what} '{path}': {first}; check that it is an intact CSV (or .csv.gz)") from exc
    header = _header(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            f"{what} '{path}' lacks column(s) {', '.join(missing)} (has: {', '.join(header[:12])}); "
            "give the MIMIC-CXR-JPG file with those columns"
        )
    absent = [c for c in optional if c not in header]
    if absent:
        table = table.drop_columns(absent)
    return table


def _header(path: Path) -> list[str]:
    """The CSV header's column names (cheap: reads the first line only)."""
    import csv
    import gzip

    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
        row = next(csv.reader(fh), [])
    return [c.strip() for c in row]


def write_table(table: pa.Table, path: Path) -> None:
    """Write an Arrow table as CSV(.gz), JSONL(.gz) or Parquet, atomically."""
    import pyarrow as pa

    fmt = table_format(path)
    gz = str(path).lower().endswith(".gz")
    with atomic_path(Path(path)) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            # dictionary pages only where values repeat (view, split): unique paths gain nothing from them
            repeat = [c for c in ("ViewPosition", "split") if c in table.column_names]
            pq.write_table(table, tmp, use_dictionary=repeat)
        elif fmt == "csv":
            import pyarrow.csv as pacsv

            opts = pacsv.WriteOptions(quoting_style="needed")
            if gz:
                with pa.CompressedOutputStream(str(tmp), "gzip") as sink:
                    pacsv.write_csv(table, sink, write_options=opts)
            else:
                pacsv.write_csv(table, tmp, write_options=opts)
        else:
            import gzip
            import json

            # plain json keeps ints as ints and '/' unescaped (pandas' to_json does neither)
            dumps = json.JSONEncoder(ensure_ascii=False).encode
            cols = {name: table[name].to_pylist() for name in table.column_names}
            names = list(cols)
            lines = [dumps(dict(zip(names, vals, strict=True))) for vals in zip(*cols.values(), strict=True)]
            data = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
            if gz:
                with gzip.open(tmp, "wb", compresslevel=6) as fh:
                    fh.write(data)
            else:
                tmp.write_bytes(data)


def read_table(path: Path, what: str) -> pa.Table:
    """Read a CSV(.gz) / JSONL(.gz) / Parquet table written by ``write_table`` (or by hand)."""
    import pyarrow as pa

    check_readable(path, what)
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if fmt == "csv":
            import pyarrow.csv as pacsv

            return pacsv.read_csv(
                path, parse_options=pacsv.ParseOptions(newlines_in_values=True)
            )
        import pyarrow.json as pajson

        return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {what} '{path}': {first}; check the file") from exc
