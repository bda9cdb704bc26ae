"""The export file formats: CSV, JSON Lines and Parquet writers that take rows in chunks and write each chunk as
it comes, so memory stays flat however many rows match (``console.services.exports`` runs them).

Formats (every format carries the same values; times are ISO 8601 text, JSON values canonical JSON text in CSV
and Parquet):

- **CSV**: UTF-8, RFC 4180 (``\\r\\n`` between records, fields with quotes/commas/newlines quoted). Every text
  value is quoted; numbers and booleans are not. As in PostgreSQL's ``COPY ... CSV``, an *unquoted* empty field
  is NULL and a *quoted* one (``""``) is an empty string. Spreadsheet formula injection is neutralised: text
  starting with ``= + - @``, a tab, CR or LF (after any leading quotes) gets one ``'`` in front
  (``console.textsafe.csv_safe``); ``console.textsafe.csv_restore`` takes it off again exactly.
- **JSON Lines**: one JSON object per ``\\n``-terminated line, UTF-8 (not ASCII-escaped), except that U+2028,
  U+2029 and U+0085 are escaped so no line splitter can cut a record. JSON values (an event's ``details``, an
  exchange's ``sampling``, ``findings`` and ``decisions``) are nested JSON, not text holding JSON; the manifest
  lists them (``jsonl.json_columns``). ``db.audit.canonical_json`` of an event's ``details`` is the text its
  ``details_hash`` is the SHA-256 of.
- **Parquet**: a fixed schema per kind (string, int64, float64, bool columns), one row group per chunk.

A NUL in a value is written as U+FFFD (as the store keeps it), so none can break a format or a reader.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import operator
from collections.abc import Collection, Iterable
from typing import IO, Any

from console.textsafe import CSV_CHECK_FIRST, csv_safe
from db import exports as exports_q

FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}


class HashingFile:
    """A binary sink that hashes and counts what passes through it to ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:  # the caller closes the real file
        self.closed = True


Chunks = Iterable[list[dict[str, Any]]]


class _CsvNull(float):
    """A NULL cell: "numeric" to the csv module (so it is never quoted) and empty when written."""

    def __str__(self) -> str:
        return ""

    __repr__ = __str__


_CSV_NULL = _CsvNull()


def write_csv(chunks: Chunks, out: Any, cols: dict[str, str]) -> int:
    """CSV (see the module docstring for NULLs and formula neutralisation); returns the rows written."""
    names = list(cols)
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
    writer.writerow(names)
    out.write(buf.getvalue().encode("utf-8"))
    rows = 0
    # Only text can start a formula; NULL (None) becomes an unquoted empty cell in every column.
    text_columns = [i for i, kind in enumerate(cols.values()) if kind == "str"]
    other_columns = [i for i, kind in enumerate(cols.values()) if kind != "str"]
    values_of = operator.itemgetter(*names)

    def lines_of(chunk: list[dict[str, Any]]) -> list[list[Any]]:
        # A function of its own, so nothing of this chunk stays referenced once its lines are written.
        lines = []
        for row in chunk:
            values = list(values_of(row)) if len(names) > 1 else [row[names[0]]]
            for i in text_columns:
                value = values[i]
                if value is None:
                    values[i] = _CSV_NULL
                elif isinstance(value, str) and value[:1] in CSV_CHECK_FIRST:
                    values[i] = csv_safe(value)
            for i in other_columns:
                if values[i] is None:
                    values[i] = _CSV_NULL
            lines.append(values)
        return lines

    for chunk in chunks:
        buf.seek(0)
        buf.truncate()
        lines = lines_of(chunk)
        writer.writerows(lines)
        del lines
        out.write(buf.getvalue().encode("utf-8"))
        rows += len(chunk)
        del chunk  # released before the next chunk is read
    return rows


# json.dumps(ensure_ascii=False) leaves these as they are, but str.splitlines() and some readers break lines there.
_JSON_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def write_jsonl(chunks: Chunks, out: Any, cols: dict[str, str], json_columns: Collection[str] = ()) -> int:
    """JSON Lines, one object per row with the columns in order; returns the rows written. ``json_columns`` hold
    JSON text and are written as the JSON values they hold."""
    names = list(cols)
    nested = [name for name in names if name in json_columns]
    rows = 0

    def line(row: dict[str, Any]) -> str:
        values = {name: row[name] for name in names}
        for name in nested:
            if values[name] is not None:
                values[name] = json.loads(values[name])
        return json.dumps(values, ensure_ascii=False).translate(_JSON_LINE_BREAKS)

    for chunk in chunks:
        lines = [line(row) for row in chunk]
        if lines:
            out.write(("\n".join(lines) + "\n").encode("utf-8"))
        rows += len(chunk)
        del chunk, lines  # released before the next chunk is read
    return rows


def parquet_schema(cols: dict[str, str], what: str) -> Any:
    """The fixed pyarrow schema of an export with these columns."""
    import pyarrow as pa

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    return pa.schema([pa.field(name, types[kind], nullable=True) for name, kind in cols.items()],
                     metadata={b"llm_console.export": what.encode("utf-8")})


def write_parquet(chunks: Chunks, out: Any, cols: dict[str, str], what: str = "") -> int:
    """Parquet with a fixed schema, one row group per chunk; returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(cols, what)
    rows = 0
    writer = pq.ParquetWriter(out, schema)
    try:
        for chunk in chunks:
            if not chunk:
                continue
            # Column by column: pyarrow converts each list in C (several times faster than from_pylist on dicts).
            table = pa.Table.from_arrays([pa.array([row[name] for row in chunk], type=field.type)
                                          for name, field in zip(schema.names, schema, strict=True)], schema=schema)
            writer.write_table(table, row_group_size=len(chunk))
            rows += len(chunk)
            del chunk, table  # released before the next chunk is read
    finally:
        writer.close()
    return rows


def write_rows(fmt: str, chunks: Chunks, out: Any, cols: dict[str, str], what: str) -> int:
    if fmt == "csv":
        return write_csv(chunks, out, cols)
    if fmt == "jsonl":
        return write_jsonl(chunks, out, cols, exports_q.json_columns(what))
    if fmt == "parquet":
        return write_parquet(chunks, out, cols, what)
    raise ValueError(f"unknown export format {fmt!r}")
