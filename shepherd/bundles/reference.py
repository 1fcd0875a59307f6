"""Checks on a bundle's reference sample (reference.parquet), read with DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb

from shepherd.errors import BundleRejected


def reference_columns(path: Path) -> list[tuple[str, str]]:
    """The (name, DuckDB type) of each column of a Parquet file, or BundleRejected when unreadable."""
    try:
        with duckdb.connect() as con:
            return [(r[0], r[1]) for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()]
    except duckdb.Error as err:
        detail = str(err).replace(str(path), "reference.parquet")
        raise BundleRejected(f"reference.parquet: not a readable Parquet file ({detail})", field="reference.parquet") from None


def check_reference(path: Path) -> None:
    """A reference sample must be a non-empty Parquet file with at least one column."""
    cols = reference_columns(path)
    if not cols:
        raise BundleRejected("reference.parquet: has no columns", field="reference.parquet")
