"""Reference profiles: what the drift kernels compare a window against, stored with the model version.

A `ReferenceProfile` is built once from the reference table (a mapping of column name -> 1-D array,
or a Parquet file read with DuckDB) and serialised with msgspec (JSON or MessagePack); the round
trip is exact (float arrays are stored as little-endian float64 bytes, floats as shortest repr).

Numeric features (int/uint/float columns, unless named in `categorical`):
  * missing = not finite (NaN, +-inf, SQL NULL); the missing rate is n_missing / n_rows;
  * the sorted finite sample (float64) -- exact KS and Wasserstein-1 need the whole sample;
  * mean and population std (ddof=0) of the finite sample (0.0 when there is none);
  * bin edges for PSI / Jensen-Shannon, and the reference proportion of each bin.

Binning rule (edges e_1 < ... < e_m, m+1 bins; a value v falls in bin #{k : e_k <= v}, so bins are
left-closed: (-inf, e_1), [e_1, e_2), ..., [e_m, +inf)):
  * at most `n_bins` distinct reference values: one bin per distinct value, plus one bin below the
    minimum and one above the maximum (edges = the distinct values + nextafter(max, +inf)). A
    constant column c therefore has three bins: v < c, v == c, v > c, so a shift either way moves
    mass into a bin the reference left empty;
  * otherwise: the reference quantiles at k/n_bins, k = 1..n_bins-1 (numpy's default "linear"
    method), deduplicated, with open-ended outer bins;
  * no finite reference value: no edges, one bin with proportion 0 (the kernels report no data).

Categorical features (bool, str, bytes, object columns, or any column named in `categorical`):
  * missing = None, NaN or SQL NULL; categories are ints (integer and bool columns; True -> 1)
    or strings (str(value) otherwise); each category's reference count; the missing rate.
  * `categorical_codes` encodes a window as int64 codes for the kernels: -1 missing, 0..K-1 the
    reference categories in profile order, K a category the reference never saw.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

PROFILE_VERSION = 1
DEFAULT_BINS = 10

_F8 = np.dtype("<f8")


class NumericFeature(msgspec.Struct, frozen=True, kw_only=True):
    """Summary of one numeric reference column; its sample, edges and proportions live in the profile's layout."""

    name: str
    n_values: int          # finite values
    n_missing: int         # NaN, +-inf or NULL
    missing_rate: float    # n_missing / n_rows (0.0 for an empty reference)
    mean: float            # 0.0 when n_values == 0
    std: float             # population std (ddof=0); 0.0 when n_values == 0


class CategoricalFeature(msgspec.Struct, frozen=True, kw_only=True):
    """One categorical reference column: its categories (sorted; ints before strings) and their counts."""

    name: str
    categories: list[str | int]
    counts: list[int]
    n_missing: int
    missing_rate: float

    @property
    def n_values(self) -> int:
        """Non-missing reference values."""
        return int(sum(self.counts))

    def frequencies(self) -> np.ndarray:
        """Reference frequency of each category (counts / non-missing values); empty when there are none."""
        counts = np.asarray(self.counts, dtype=np.float64)
        n = self.n_values
        return counts / n if n else np.zeros(len(self.counts))


class ReferenceProfile(msgspec.Struct, frozen=True, kw_only=True):
    """Reference statistics of every monitored column, laid out so the Numba kernels read them without copying.

    `samples` is every numeric feature's sorted finite sample concatenated (feature j occupies
    samples[sample_offsets[j]:sample_offsets[j+1]]); `edges` likewise with `edge_offsets`; feature j
    has edge_offsets[j+1] - edge_offsets[j] + 1 bins whose reference proportions occupy
    proportions[edge_offsets[j] + j : edge_offsets[j+1] + j + 1].
    """

    version: int = PROFILE_VERSION
    n_rows: int
    n_bins: int
    numeric: list[NumericFeature]
    categorical: list[CategoricalFeature]
    samples: bytes          # float64 little-endian
    sample_offsets: list[int]
    edges: bytes            # float64 little-endian
    edge_offsets: list[int]
    proportions: bytes      # float64 little-endian

    def __post_init__(self) -> None:
        """Reject layouts whose offsets do not describe the byte arrays (a corrupt or hand-edited profile)."""
        nf = len(self.numeric)
        so, eo = self.sample_offsets, self.edge_offsets
        if len(so) != nf + 1 or len(eo) != nf + 1 or so[0] != 0 or eo[0] != 0:
            raise ValueError("profile offsets do not match its numeric features")
        if any(b < a for a, b in zip(so, so[1:])) or any(b < a for a, b in zip(eo, eo[1:])):
            raise ValueError("profile offsets must be non-decreasing")
        if so[-1] * 8 != len(self.samples) or eo[-1] * 8 != len(self.edges):
            raise ValueError("profile samples/edges length does not match the offsets")
        if (eo[-1] + nf) * 8 != len(self.proportions):
            raise ValueError("profile proportions length does not match the edges")
        for j, f in enumerate(self.numeric):
            if so[j + 1] - so[j] != f.n_values:
                raise ValueError(f"profile sample of {f.name!r} does not hold n_values values")
        for c in self.categorical:
            if len(c.categories) != len(c.counts):
                raise ValueError(f"profile categories and counts of {c.name!r} differ in length")

    # -- names and per-feature views -------------------------------------------------------------

    @property
    def numeric_names(self) -> list[str]:
        """Numeric feature names, in kernel (column) order."""
        return [f.name for f in self.numeric]

    @property
    def categorical_names(self) -> list[str]:
        """Categorical feature names, in kernel (column) order."""
        return [f.name for f in self.categorical]

    def samples_array(self) -> np.ndarray:
        """All sorted samples concatenated (read-only float64 view of `samples`)."""
        return np.frombuffer(self.samples, dtype=_F8)

    def edges_array(self) -> np.ndarray:
        """All bin edges concatenated (read-only float64 view)."""
        return np.frombuffer(self.edges, dtype=_F8)

    def proportions_array(self) -> np.ndarray:
        """All reference bin proportions concatenated (read-only float64 view)."""
        return np.frombuffer(self.proportions, dtype=_F8)

    def _numeric_index(self, name: str) -> int:
        for j, f in enumerate(self.numeric):
            if f.name == name:
                return j
        raise KeyError(f"no numeric feature {name!r} in the profile")

    def sample(self, name: str) -> np.ndarray:
        """Sorted finite reference sample of a numeric feature."""
        j = self._numeric_index(name)
        return self.samples_array()[self.sample_offsets[j]:self.sample_offsets[j + 1]]

    def bin_edges(self, name: str) -> np.ndarray:
        """Bin edges of a numeric feature (see the module docstring for the binning rule)."""
        j = self._numeric_index(name)
        return self.edges_array()[self.edge_offsets[j]:self.edge_offsets[j + 1]]

    def bin_proportions(self, name: str) -> np.ndarray:
        """Reference proportion of each bin of a numeric feature (len(bin_edges) + 1 values)."""
        j = self._numeric_index(name)
        return self.proportions_array()[self.edge_offsets[j] + j:self.edge_offsets[j + 1] + j + 1]

    # -- encoding a window for the kernels ---------------------------------------------------------

    def numeric_matrix(self, columns: Mapping[str, Any]) -> np.ndarray:
        """A window's numeric features as a C-ordered float64 matrix (rows x features), missing as NaN."""
        names = self.numeric_names
        n = _column_length(columns, names)
        out = np.empty((n, len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            out[:, j] = as_float(_require(columns, name))
        return out

    def categorical_codes(self, columns: Mapping[str, Any]) -> np.ndarray:
        """A window's categorical features as int64 codes (rows x features): -1 missing, K unseen."""
        feats = self.categorical
        n = _column_length(columns, [f.name for f in feats])
        out = np.empty((n, len(feats)), dtype=np.int64)
        for j, f in enumerate(feats):
            keys, inverse, missing = _category_keys(_require(columns, f.name))
            index = {c: i for i, c in enumerate(f.categories)}
            unseen = len(f.categories)
            lookup = np.fromiter((index.get(k, unseen) for k in keys), dtype=np.int64, count=len(keys))
            codes = np.full(n, -1, dtype=np.int64)
            codes[~missing] = lookup[inverse]
            out[:, j] = codes
        return out


# -- building ----------------------------------------------------------------------------------------


def build_profile(
    columns: Mapping[str, Any], n_bins: int = DEFAULT_BINS, categorical: Collection[str] = ()
) -> ReferenceProfile:
    """Profile a reference table given as column name -> 1-D array (numpy, masked, or sequence).

    Integer and float columns are numeric unless named in `categorical`; bool, string and object
    columns are categorical. Other dtypes (dates, timestamps, ...) are rejected with TypeError.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    unknown = set(categorical) - set(columns)
    if unknown:
        raise KeyError(f"categorical columns not in the table: {sorted(unknown)}")
    arrays = {name: _as_array(values) for name, values in columns.items()}
    lengths = {a.shape[0] for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: {sorted(lengths)}")
    n_rows = lengths.pop() if lengths else 0

    numeric: list[NumericFeature] = []
    cats: list[CategoricalFeature] = []
    samples, sample_offsets, edges, edge_offsets, props = [], [0], [], [0], []
    for name, arr in arrays.items():
        kind = arr.dtype.kind
        if name in categorical or kind in "bUSO":
            cats.append(_categorical_feature(name, arr, n_rows))
        elif kind in "iuf":
            values = as_float(arr)
            sample = np.sort(values[np.isfinite(values)])
            n = int(sample.shape[0])
            e = _bin_edges(sample, n_bins)
            numeric.append(NumericFeature(
                name=name, n_values=n, n_missing=n_rows - n,
                missing_rate=(n_rows - n) / n_rows if n_rows else 0.0,
                mean=float(sample.mean()) if n else 0.0,
                std=float(sample.std()) if n else 0.0,
            ))
            samples.append(sample)
            sample_offsets.append(sample_offsets[-1] + n)
            edges.append(e)
            edge_offsets.append(edge_offsets[-1] + e.shape[0])
            props.append(_bin_proportions(sample, e))
        else:
            raise TypeError(f"column {name!r}: unsupported dtype {arr.dtype} for drift monitoring")

    def pack(parts: list[np.ndarray]) -> bytes:
        return np.concatenate(parts).astype(_F8).tobytes() if parts else b""

    return ReferenceProfile(
        n_rows=n_rows, n_bins=n_bins, numeric=numeric, categorical=cats,
        samples=pack(samples), sample_offsets=sample_offsets,
        edges=pack(edges), edge_offsets=edge_offsets, proportions=pack(props),
    )


def build_profile_from_parquet(
    path: Path | str,
    n_bins: int = DEFAULT_BINS,
    categorical: Collection[str] = (),
    columns: Collection[str] | None = None,
) -> ReferenceProfile:
    """Profile a Parquet reference table read with DuckDB (NULL counts as missing); `columns` selects columns."""
    import duckdb

    with duckdb.connect() as con:
        table = con.execute("SELECT * FROM read_parquet(?)", [str(path)]).fetchnumpy()
    if columns is not None:
        missing = [c for c in columns if c not in table]
        if missing:
            raise KeyError(f"columns not in {path}: {missing}")
        table = {c: table[c] for c in columns}
    return build_profile(table, n_bins=n_bins, categorical=categorical)


def _bin_edges(sample: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges of a sorted finite sample (rule in the module docstring)."""
    n = sample.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.float64)
    distinct = sample[np.concatenate(([True], sample[1:] != sample[:-1]))]
    if distinct.shape[0] <= n_bins:
        return np.concatenate((distinct, [np.nextafter(distinct[-1], np.inf)]))
    q = np.quantile(sample, np.arange(1, n_bins) / n_bins)
    return np.unique(q)


def _bin_proportions(sample: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of a sorted sample in each left-closed bin defined by `edges` (zeros when the sample is empty)."""
    n = sample.shape[0]
    pos = np.concatenate(([0], np.searchsorted(sample, edges, side="left"), [n]))
    counts = np.diff(pos)
    return counts / n if n else np.zeros(counts.shape[0])


def _categorical_feature(name: str, arr: np.ndarray, n_rows: int) -> CategoricalFeature:
    keys, inverse, missing = _category_keys(arr)
    counts = np.bincount(inverse, minlength=len(keys)) if len(keys) else np.zeros(0, dtype=np.int64)
    order = sorted(range(len(keys)), key=lambda i: (isinstance(keys[i], str), keys[i]))
    n_missing = int(missing.sum())
    return CategoricalFeature(
        name=name,
        categories=[keys[i] for i in order],
        counts=[int(counts[i]) for i in order],
        n_missing=n_missing,
        missing_rate=n_missing / n_rows if n_rows else 0.0,
    )


# -- column helpers ----------------------------------------------------------------------------------


def _as_array(values: Any) -> np.ndarray:
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"columns must be 1-D, got shape {arr.shape}")
    return arr


def _require(columns: Mapping[str, Any], name: str) -> np.ndarray:
    if name not in columns:
        raise KeyError(f"window has no column {name!r}")
    return _as_array(columns[name])


def _column_length(columns: Mapping[str, Any], names: list[str]) -> int:
    lengths = {_require(columns, name).shape[0] for name in names}
    if len(lengths) > 1:
        raise ValueError(f"window columns differ in length: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def as_float(arr: np.ndarray) -> np.ndarray:
    """Float64 copy of a numeric column with masked (NULL) entries as NaN.

    DuckDB's `fetchnumpy` returns a column with NULLs as a masked array; `np.asarray` of it would read
    each NULL as its placeholder (0), a value that was never there."""
    if isinstance(arr, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(arr)
        out = np.asarray(arr.data, dtype=np.float64).copy()
        out[mask] = np.nan
        return out
    if arr.dtype.kind not in "iufb":
        raise TypeError(f"numeric column has dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64)


def _category_keys(arr: np.ndarray) -> tuple[list[str | int], np.ndarray, np.ndarray]:
    """(distinct keys, index of each non-missing value's key, missing mask) of a categorical column."""
    if isinstance(arr, np.ma.MaskedArray):
        missing = np.ma.getmaskarray(arr).copy()
        data = np.asarray(arr.data)
    else:
        missing = np.zeros(arr.shape[0], dtype=bool)
        data = arr
    kind = data.dtype.kind
    if kind == "O":
        missing |= np.equal(data, None)
        with np.errstate(invalid="ignore"):
            missing |= np.not_equal(data, data)          # NaN (and NaT) are the only values != themselves
    elif kind in "fc":
        missing |= np.isnan(data)
    elif kind == "M" or kind == "m":
        missing |= np.isnat(data)
    present = data[~missing]
    if kind in "biu":
        uniq, inverse = np.unique(present.astype(np.int64), return_inverse=True)
        return [int(u) for u in uniq], inverse.reshape(-1), missing
    if kind in "US":
        uniq, inverse = np.unique(present.astype(str), return_inverse=True)
        return [str(u) for u in uniq], inverse.reshape(-1), missing
    if kind == "O":
        # factorise the raw objects first (one dict probe per row), then merge raw values whose keys
        # coincide (e.g. 1 and np.int64(1)); only the distinct values pay for _object_key
        # (keyed by type too, so that 1, 1.0 and True stay apart as they would row by row)
        raw: dict[tuple[type, Any], int] = {}
        inverse = np.fromiter((raw.setdefault((type(v), v), len(raw)) for v in present), dtype=np.int64,
                              count=present.shape[0])
        index: dict[str | int, int] = {}
        remap = np.fromiter((index.setdefault(_object_key(v), len(index)) for _, v in raw), dtype=np.int64,
                            count=len(raw))
        return list(index), remap[inverse], missing
    # floats and anything else forced categorical: the string form of each value
    uniq, inverse = np.unique(present.astype(str), return_inverse=True)
    return [str(u) for u in uniq], inverse.reshape(-1), missing


def _object_key(v: Any) -> str | int:
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)
