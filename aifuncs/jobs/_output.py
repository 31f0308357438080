"""A job's output target: table:NAME, FILE.parquet or FILE.csv, checked before the run pays for anything and
written whole or not at all."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

from aifuncs.errors import AifuncsError


@dataclass(frozen=True)
class Output:
    text: str
    kind: str  # table, parquet, csv
    target: str

    @classmethod
    def parse(cls, text: str | None) -> Output | None:
        if text is None:
            return None
        if text.startswith("table:"):
            name = text.removeprefix("table:")
            try:
                table = exp.to_table(name, dialect="duckdb")
            except sqlglot.errors.ParseError:
                name = ""
            else:  # [catalog.][schema.]table, each part a name: checked now, not after the run has paid
                if len(table.parts) > 3 or not all(isinstance(p, exp.Identifier) for p in table.parts):
                    raise AifuncsError(
                        f"--output {text!r}: {name!r} is not a table name; give table:NAME or table:SCHEMA.NAME"
                        ' (quote a name with other characters: table:"my table").'
                    )
            if not name:
                raise AifuncsError(f"--output {text!r}: give a table name, e.g. table:ticket_topics.")
            return cls(text, "table", name)
        suffix = Path(text).suffix.lower()
        if suffix in (".parquet", ".csv"):
            path = Path(text).resolve()
            check_writable(text, path)
            return cls(text, suffix[1:], str(path))
        raise AifuncsError(f"--output {text!r}: use table:NAME, FILE.parquet or FILE.csv.")

    def write_spark(self, frame: Any) -> int:
        """`write` for a Spark DataFrame: a table of the session's catalog, or one local file."""
        if self.kind == "table":
            frame.write.mode("overwrite").saveAsTable(self.target)
            return int(frame.sparkSession.table(self.target).count())
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        rows = frame.toArrow()
        partial = f"{self.target}.{os.getpid()}.partial"
        if self.kind == "parquet":
            pq.write_table(rows, partial)
        else:
            pa_csv.write_csv(rows, partial)
        os.replace(partial, self.target)
        return int(rows.num_rows)

    def write(self, con: duckdb.DuckDBPyConnection, relation: duckdb.DuckDBPyRelation) -> int:
        """Write the rows whole or not at all: a failed job leaves the previous output in place."""
        if self.kind == "table":
            table = exp.to_table(self.target, dialect="duckdb")
            staging = f"__aifuncs_output_{os.getpid()}"
            relation.create(staging)
            try:
                con.execute(f"CREATE OR REPLACE TABLE {table.sql('duckdb')} AS FROM {staging}")
            finally:
                con.execute(f"DROP TABLE IF EXISTS {staging}")
            (count,) = con.execute(f"SELECT count(*) FROM {table.sql('duckdb')}").fetchall()[0]
            return int(count)
        partial = f"{self.target}.{os.getpid()}.partial"
        if self.kind == "parquet":
            relation.to_parquet(partial)
            (count,) = con.execute("SELECT count(*) FROM read_parquet(?)", [partial]).fetchall()[0]
        else:
            relation.to_csv(partial, header=True)
            (count,) = con.execute("SELECT count(*) FROM read_csv(?, header = true)", [partial]).fetchall()[0]
        os.replace(partial, self.target)
        return int(count)


def check_writable(text: str, path: Path) -> None:
    """Refuse an output file the run could not write, before it pays for a single answer: the file is
    written beside itself (FILE.PID.partial) and moved into place, so its folder must take new files."""
    folder = path.parent
    if not folder.is_dir():
        missing = next((p for p in [folder, *folder.parents] if p.exists()), None)
        what = "is not a folder" if folder.exists() else "does not exist"
        hint = f" (create it: mkdir -p {folder})" if missing is not None and missing.is_dir() else ""
        raise AifuncsError(f"--output {text!r}: the folder {str(folder)!r} {what}{hint}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AifuncsError(
            f"--output {text!r}: the folder {str(folder)!r} is not writable by this user; pick another folder."
        )
    if path.is_dir():
        raise AifuncsError(f"--output {text!r} is a folder; name a file in it, e.g. {str(path / 'out')!r}.")
    if path.exists() and not os.access(path, os.W_OK):
        raise AifuncsError(f"--output {text!r}: the file exists and is not writable by this user.")
