"""Drift kernels against their oracles: scipy (KS, Wasserstein, Jensen-Shannon, chi-square, BH) and a numpy PSI.

Tolerances: quantities bounded by 1 (p-values, KS statistic, JS distance, rates) are compared with an
absolute 1e-9; quantities that scale with the data or the counts (PSI, Wasserstein, chi-square
statistic) with 1e-9 relative to max(1, |oracle|). The kernels perform the same floating-point
operations as the oracles except for summation order (numpy sums pairwise, the kernels
sequentially) and, in the asymptotic KS tail, log-space instead of double-double sums, so any real
disagreement is many orders of magnitude above these bounds.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numba import njit

from shepherd.monitoring import kernels as K
from shepherd.monitoring.profile import ReferenceProfile, build_profile, build_profile_from_parquet

stats = pytest.importorskip("scipy.stats")
from scipy.spatial.distance import jensenshannon  # noqa: E402
from scipy.stats import _stats_py  # noqa: E402  (the exact KS recursion, for the pairs test)

TOL = 1e-9
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

POOL = [-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 1000.0, math.nan]
finite_floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False)
values = st.one_of(st.sampled_from(POOL), finite_floats)


def column(min_size: int, max_size: int) -> st.SearchStrategy[list[float]]:
    """Lists of floats with many ties and NaNs, or constant columns."""
    return st.one_of(
        st.lists(values, min_size=min_size, max_size=max_size),
        st.builds(lambda v, n: [v] * n, values, st.integers(min_size, max_size)),
    )


def close(a: float, b: float, tol: float = TOL) -> bool:
    """|a - b| <= tol * max(1, |b|) (absolute for values up to 1, relative above)."""
    return abs(a - b) <= tol * max(1.0, abs(b))


def finite(xs) -> np.ndarray:
    a = np.asarray(xs, dtype=np.float64)
    return a[np.isfinite(a)]


def bin_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin counts with the documented rule: a value v falls in bin #{edges <= v}."""
    return np.bincount(np.searchsorted(edges, x, side="right"), minlength=edges.shape[0] + 1)


def psi_oracle(cur: np.ndarray, ref: np.ndarray, edges: np.ndarray, eps: float = 1e-4) -> float:
    """Plain-numpy PSI with proportions floored at eps (the documented empty-bin rule)."""
    c = np.maximum(bin_counts(cur, edges) / cur.shape[0], eps)
    r = np.maximum(bin_counts(ref, edges) / ref.shape[0], eps)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_oracle(cur: np.ndarray, ref: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return stats.ks_2samp(cur, ref)


def check_numeric_feature(res, j: int, cur_col, ref_col, profile: ReferenceProfile, name: str) -> None:
    """Assert feature j of a NumericDriftResult equals the oracles on the raw columns."""
    cur, ref = finite(cur_col), finite(ref_col)
    n_rows = len(cur_col)
    assert res.n[j] == cur.shape[0]
    if n_rows:
        assert close(res.missing_rate[j], (n_rows - cur.shape[0]) / n_rows)
    else:
        assert math.isnan(res.missing_rate[j])
    if cur.shape[0] == 0 or ref.shape[0] == 0:
        assert not res.has_data[j]
        for field in (res.psi, res.ks_stat, res.ks_pvalue, res.wasserstein, res.wasserstein_norm, res.js):
            assert math.isnan(field[j])
        return
    assert res.has_data[j]
    ks = ks_oracle(cur, ref)
    assert close(res.ks_stat[j], float(ks.statistic)), (res.ks_stat[j], ks.statistic)
    assert close(res.ks_pvalue[j], float(ks.pvalue)), (res.ks_pvalue[j], ks.pvalue)
    w = stats.wasserstein_distance(cur, ref)
    assert close(res.wasserstein[j], w), (res.wasserstein[j], w)
    sd = float(np.std(ref))
    if sd > 0:
        assert close(res.wasserstein_norm[j], w / sd)
    else:
        assert res.wasserstein_norm[j] == (0.0 if w == 0 else math.inf)
    edges = profile.bin_edges(name)
    assert close(res.psi[j], psi_oracle(cur, ref, edges)), (res.psi[j], psi_oracle(cur, ref, edges))
    js = float(np.nan_to_num(jensenshannon(bin_counts(cur, edges), bin_counts(ref, edges), base=2)))
    assert close(res.js[j], js), (res.js[j], js)
    for field in (res.psi, res.ks_stat, res.ks_pvalue, res.wasserstein, res.js):
        assert not math.isnan(field[j])


# ---------------------------------------------------------------------------------------------
# Numeric features
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), n_bins=st.integers(1, 12))
def test_numeric_drift_matches_oracles(data, n_bins):
    """PSI, KS (statistic, exact p-value), W1, W1/std and JS equal the oracles: ties, NaNs, constants, tiny windows."""
    n_ref = data.draw(st.integers(0, 60), label="n_ref")
    n_cur = data.draw(st.integers(0, 40), label="n_cur")
    ref = {f"f{j}": data.draw(column(n_ref, n_ref), label=f"ref{j}") for j in range(2)}
    cur = {f"f{j}": data.draw(column(n_cur, n_cur), label=f"cur{j}") for j in range(2)}
    profile = build_profile({k: np.array(v, dtype=np.float64) for k, v in ref.items()}, n_bins=n_bins)
    matrix = np.column_stack([np.array(cur[k], dtype=np.float64) for k in profile.numeric_names]).reshape(n_cur, 2)
    res = K.numeric_drift(profile, matrix)
    assert res.names == ("f0", "f1") and res.n_rows == n_cur
    for j, name in enumerate(res.names):
        check_numeric_feature(res, j, cur[name], ref[name], profile, name)
        assert res.ref_missing_rate[j] == (len(ref[name]) - finite(ref[name]).shape[0]) / max(len(ref[name]), 1)


@settings(max_examples=60, deadline=None)
@given(ref=column(1, 30), cur=st.lists(values, min_size=1, max_size=1))
def test_single_row_window_matches_oracles(ref, cur):
    """A one-row window gets the same statistics as scipy computes for a sample of one."""
    profile = build_profile({"x": np.array(ref, dtype=np.float64)})
    res = K.numeric_drift(profile, {"x": np.array(cur, dtype=np.float64)})
    check_numeric_feature(res, 0, cur, ref, profile, "x")


@pytest.mark.parametrize(("n_cur", "n_ref"), [
    (12_000, 15_000), (30, 12_000), (3_000, 2_000), (2_500, 2_500),
    (1_000, 455), (455, 1_000), (997, 10_000),  # a default window against a small reference, both ways; coprime sizes
])
@pytest.mark.parametrize("shift", [0.0, 0.03, 0.08, 0.3, 2.0])
def test_ks_large_samples_match_scipy(n_cur, n_ref, shift):
    """Above 10 000 values KS uses scipy's asymptotic kstwo path, below it the exact DP; both match scipy."""
    rng = np.random.default_rng(int(shift * 100) + n_cur)
    ref = rng.normal(size=n_ref)
    cur = rng.normal(loc=shift, size=n_cur)
    profile = build_profile({"x": ref})
    res = K.numeric_drift(profile, cur.reshape(-1, 1))
    check_numeric_feature(res, 0, cur, ref, profile, "x")


@njit(cache=True, fastmath={"contract"})
def _ks_inside_one_row(m, n, g, h):
    """The exact KS recursion one row at a time: `K._ks_inside_method` before rows went in pairs."""
    if m < n:
        m, n = n, m
    mg, ng = m // g, n // g
    V = np.ones(n + 1)
    V[:min(-((-h) // mg), n + 1)] = 0.0
    recip = np.empty(m + n + 1)
    recip[0] = 0.0
    for k in range(1, m + n + 1):
        recip[k] = 1.0 / k
    hi = 0
    for i in range(1, m + 1):
        lo = min(max((ng * i - h) // mg + 1, 0), n)
        hi = min(-((-(ng * i + h)) // mg), n + 1)
        if hi <= lo:
            return 1.0
        val = 0.0 if lo == 0 else 1.0
        for j in range(lo, hi):
            r = recip[i + j]
            val = val * (j * r) + V[j] * (i * r)
            V[j] = val
    return V[hi - 1]


@settings(max_examples=300, deadline=None)
@given(m=st.integers(1, 1200), n=st.integers(1, 600), frac=st.floats(0.0, 1.0))
# the edges, whatever hypothesis draws: one row or column, odd and even row counts, h = 1 and h = lcm
@example(m=1, n=1, frac=0.0)
@example(m=1, n=1, frac=1.0)
@example(m=2, n=1, frac=0.5)
@example(m=1, n=7, frac=0.3)
@example(m=7, n=3, frac=0.0)
@example(m=8, n=3, frac=1.0)
@example(m=13, n=13, frac=0.2)
@example(m=1200, n=599, frac=0.05)
def test_ks_rows_in_pairs_is_the_one_row_recursion(m, n, frac):
    """Two rows at a time (odd and even counts, bands that start, end or vanish between the two rows)
    gives bit for bit the one-row recursion's result, and scipy's to 1e-9."""
    g = math.gcd(m, n)
    lcm = (m // g) * n
    h = max(1, round(frac * lcm))
    ours = K._ks_inside_method(m, n, g, h)
    assert ours == _ks_inside_one_row(m, n, g, h), (m, n, h)
    if m != n:
        theirs = float(_stats_py._compute_outer_prob_inside_method(max(m, n), min(m, n), g, h))
        assert abs(ours - theirs) <= TOL, (m, n, h, ours, theirs)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_ref=st.integers(1, 400), rows=st.integers(1, 300), windows=st.integers(1, 4), shift=st.floats(0.0, 1.5),
       slots=st.sampled_from([2, 8, 1 << 12]), seed=st.integers(0, 2**32 - 1))
@example(n_ref=398, rows=300, windows=4, shift=0.0, slots=2, seed=0)  # a table that must empty itself every pass
def test_exact_ks_pvalues_from_the_table_are_the_computed_ones(n_ref, rows, windows, shift, slots, seed):
    """The KS p-values of a pass are the same, bit for bit, whether the table is empty, already holds
    them (a second pass: every exact one a hit) or is too small to hold a pass's keys; and each is
    ks_pvalue's for its statistic and sizes, within 1e-9 of scipy's."""
    rng = np.random.default_rng(seed)
    ref = {f"f{i}": np.round(rng.normal(size=n_ref), 1) for i in range(3)}  # ties, so repeated statistics
    ref["f2"][: n_ref // 3] = np.nan  # another reference size for that feature
    profile = build_profile(ref, n_bins=5)
    x = np.round(rng.normal(loc=shift, size=(rows * windows, 3)), 1)
    x[rng.random(x.shape) < 0.1] = np.nan  # window sizes vary by feature and window
    bounds = np.arange(windows + 1) * rows
    memo = K.KsMemo(slots)
    cold = K.numeric_drift_windows(profile, x, bounds, memo=memo)
    after_cold = memo.stats()
    warm = K.numeric_drift_windows(profile, x, bounds, memo=memo)
    other = K.numeric_drift_windows(profile, x, bounds, memo=K.KsMemo(1 << 12))
    assert memo.stats()["entries"] <= slots // 2, "never more than half full"
    exact = 0
    for w in range(windows):
        for a, b, c in ((cold[w], warm[w], other[w]),):
            np.testing.assert_array_equal(a.ks_pvalue, b.ks_pvalue)
            np.testing.assert_array_equal(a.ks_pvalue, c.ks_pvalue)
            np.testing.assert_array_equal(a.ks_stat, b.ks_stat)
        for j, name in enumerate(profile.numeric_names):
            if not cold[w].has_data[j]:
                assert np.isnan(cold[w].ks_pvalue[j])
                continue
            cur = finite(x[bounds[w]:bounds[w + 1], j])
            n_r = len(finite(ref[name]))
            exact += len(cur) != n_r and cold[w].ks_stat[j] > 0
            d = stats.ks_2samp(cur, finite(ref[name])).statistic
            assert (cold[w].ks_stat[j], cold[w].ks_pvalue[j]) == K.ks_pvalue(float(d), len(cur), n_r)
            assert abs(cold[w].ks_pvalue[j] - stats.ks_2samp(cur, finite(ref[name])).pvalue) <= TOL
    if slots == 1 << 12:  # room for every key: the second pass computed nothing
        assert memo.stats()["computed"] == after_cold["computed"]
        assert memo.stats()["hits"] - after_cold["hits"] == exact


def test_the_ks_table_key_names_sizes_and_h():
    """A key holds both sizes and h at their largest (n <= 10,000, h <= lcm), in either order of the sizes."""
    for n1, n2, frac in ((10_000, 9_999, 0.01), (9_999, 10_000, 0.01), (1, 10_000, 1.0), (10_000, 1, 0.5), (2, 3, 1.0), (1000, 398, 0.05)):
        g = math.gcd(n1, n2)
        lcm = n1 // g * n2
        h = max(1, round(frac * lcm))
        key = K._ks_key(n1, n2, h)
        assert key > 0 and key == K._ks_key(n2, n1, h)
        assert K._ks_key_pvalue(key) == K.ks_pvalue(h / lcm, n1, n2)[1]


def test_the_ks_table_size_is_checked():
    for bad in (0, 1, 3, 100):
        with pytest.raises(ValueError, match="power of two"):
            K.KsMemo(bad)
    memo = K.KsMemo(8)
    K.numeric_drift_windows(build_profile({"x": np.arange(7.0)}), np.arange(10.0).reshape(-1, 1), memo=memo)
    assert memo.stats() == {"entries": 1, "hits": 0, "computed": 1}
    memo.clear()
    assert memo.stats() == {"entries": 0, "hits": 0, "computed": 0} and not memo.keys.any()


@settings(max_examples=60, deadline=None)
@given(xs=st.lists(st.one_of(st.sampled_from([0.0, -0.0, 1.0, -2.5, 5e-324, -1e300]),
                             st.floats(allow_nan=False, allow_infinity=False)), max_size=50),
       n=st.integers(0, 5000), kind=st.sampled_from(["normal", "ties", "wide"]), seed=st.integers(0, 2**32 - 1))
def test_radix_sort_matches_numpy(xs, n, kind, seed):
    """The in-kernel radix sort orders finite floats as np.sort does (below/above 512 values, ties, +-0, subnormals)."""
    rng = np.random.default_rng(seed)
    block = {"normal": lambda: rng.normal(size=n),
             "ties": lambda: rng.integers(-3, 3, n) * 0.5,
             "wide": lambda: rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, n)}[kind]()
    a = np.concatenate([np.array(xs, dtype=np.float64), block])
    b = a.copy()
    K._sort_finite(b)
    assert np.array_equal(b, np.sort(a))


KSTWO_N = [1, 2, 3, 7, 20, 100, 140, 141, 500, 5_000, 100_000, 100_001, 400_000, 1_500_000]
KSTWO_C = [0.02, 0.05, 0.1, 0.5, 0.754, 1.0, 2.0, 3.0, 4.5, 10.0, 50.0, 200.0, 400.0]


@pytest.mark.parametrize("n", KSTWO_N)
def test_kstwo_sf_matches_scipy_in_every_branch(n):
    """The ported kstwo.sf (Ruben-Gambino, Durbin/MTW, Pomeranz, Pelz-Good, Smirnov) equals scipy's at 1e-9."""
    xs = [0.3 / n, 0.75 / n, 1.0 / n, 1.5 / n, 0.5, 0.6, 0.9, 1 - 0.5 / n, 0.999]
    xs += [math.sqrt(c / n) for c in KSTWO_C]
    for x in sorted({x for x in xs if 0.0 < x < 1.0}):
        ours, theirs = K.kstwo_sf(n, x), float(stats.kstwo.sf(x, n))
        assert abs(ours - theirs) <= TOL, (n, x, ours, theirs)
        assert ours == theirs or abs(ours / theirs - 1) <= TOL, (n, x, ours, theirs)   # tails too


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 10, 51, 300, 2_000])
def test_chi2_sf_matches_scipy(dof):
    """The incomplete-gamma chi-square tail equals scipy.stats.chi2.sf at 1e-9 from the bulk to the far tail."""
    for q in [0.0, 1e-3, 0.1, 0.5, 0.9, 1.0, 1.1, 1.5, 2.0, 3.0, 10.0]:
        x = q * dof
        assert abs(K.chi2_sf(x, dof) - float(stats.chi2.sf(x, dof))) <= TOL, (x, dof)


def test_empty_window_reports_no_data():
    """A window without rows gives has_data False, NaN statistics and NaN missing rates, without raising."""
    profile = build_profile({"a": np.arange(10.0), "b": np.ones(10)})
    for window in (np.empty((0, 2)), {"a": np.array([]), "b": np.array([])}):
        res = K.numeric_drift(profile, window)
        assert res.n_rows == 0 and not res.has_data.any() and (res.n == 0).all()
        for field in (res.psi, res.ks_stat, res.ks_pvalue, res.wasserstein, res.wasserstein_norm, res.js,
                      res.missing_rate):
            assert np.isnan(field).all()


def test_all_missing_feature_has_no_data_but_a_missing_rate():
    """A feature whose window values are all NaN/inf is flagged no-data with missing rate 1; the others are valid."""
    profile = build_profile({"a": np.arange(20.0), "b": np.arange(20.0)})
    window = np.column_stack([np.array([np.nan, np.inf, -np.inf, np.nan]), np.array([1.0, 2.0, np.nan, 3.0])])
    res = K.numeric_drift(profile, window)
    assert res.has_data.tolist() == [False, True]
    assert res.missing_rate.tolist() == [1.0, 0.25]
    assert np.isnan(res.ks_pvalue[0]) and not np.isnan(res.ks_pvalue[1])


def test_reference_without_values_has_no_data():
    """A reference column with no finite value cannot be compared: has_data is False whatever the window."""
    profile = build_profile({"a": np.array([np.nan, np.nan])})
    assert profile.numeric[0].missing_rate == 1.0 and profile.bin_edges("a").size == 0
    res = K.numeric_drift(profile, np.array([[1.0], [2.0]]))
    assert not res.has_data[0] and res.missing_rate[0] == 0.0


def test_constant_columns():
    """A constant reference gets three bins (<c, =c, >c); same constant -> no drift, other constant -> W1/std = inf."""
    profile = build_profile({"x": np.full(50, 2.0)})
    assert profile.bin_edges("x").tolist() == [2.0, np.nextafter(2.0, np.inf)]
    assert profile.bin_proportions("x").tolist() == [0.0, 1.0, 0.0]
    same = K.numeric_drift(profile, np.full((7, 1), 2.0))
    assert (same.psi[0], same.ks_stat[0], same.ks_pvalue[0], same.wasserstein[0]) == (0.0, 0.0, 1.0, 0.0)
    assert same.wasserstein_norm[0] == 0.0 and same.js[0] == 0.0
    moved = K.numeric_drift(profile, np.full((7, 1), 3.0))
    assert moved.wasserstein[0] == 1.0 and moved.wasserstein_norm[0] == math.inf
    assert moved.ks_stat[0] == 1.0 and moved.js[0] == pytest.approx(1.0)
    assert moved.psi[0] == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4))


def test_binning_rule():
    """High-cardinality references are binned at deduplicated linear quantiles, low-cardinality ones per value."""
    rng = np.random.default_rng(3)
    x = np.concatenate([np.zeros(500), rng.normal(size=500)])
    profile = build_profile({"x": x}, n_bins=10)
    expected = np.unique(np.quantile(x, np.arange(1, 10) / 10))
    assert np.array_equal(profile.bin_edges("x"), expected) and expected.size < 9
    profile = build_profile({"d": np.array([1.0, 1.0, 2.0, 5.0])}, n_bins=10)
    assert profile.bin_edges("d").tolist() == [1.0, 2.0, 5.0, np.nextafter(5.0, np.inf)]
    assert profile.bin_proportions("d").tolist() == [0.0, 0.5, 0.25, 0.25, 0.0]


# ---------------------------------------------------------------------------------------------
# Categorical features
# ---------------------------------------------------------------------------------------------

CATS = st.sampled_from(["a", "b", "c", None])
CUR_CATS = st.sampled_from(["a", "b", "c", "d", "e", None])


@SETTINGS
@given(ref=st.lists(CATS, max_size=60), cur=st.lists(CUR_CATS, max_size=40))
def test_categorical_drift_matches_oracles(ref, cur):
    """Chi-square (floored renormalised expectation, unseen bucket) and JS equal scipy; no data -> NaN, not has_data."""
    profile = build_profile({"c": np.array(ref, dtype=object)})
    res = K.categorical_drift(profile, {"c": np.array(cur, dtype=object)})
    feat = profile.categorical[0]
    present = [v for v in cur if v is not None]
    assert res.n[0] == len(present)
    assert res.missing_rate[0] == (len(cur) - len(present)) / len(cur) if cur else math.isnan(res.missing_rate[0])
    if not present or not feat.categories:
        assert not res.has_data[0] and math.isnan(res.chi2_stat[0]) and math.isnan(res.chi2_pvalue[0])
        return
    unseen = sum(v not in feat.categories for v in present)
    assert res.n_unseen[0] == unseen
    obs = [present.count(c) for c in feat.categories] + ([unseen] if unseen else [])
    ref_counts = list(feat.counts) + ([0] if unseen else [])
    q = np.array(ref_counts, dtype=np.float64) / sum(feat.counts)
    pi = np.maximum(q, 1e-4)
    pi = pi / pi.sum()
    assert res.has_data[0] and res.chi2_dof[0] == len(obs) - 1
    if len(obs) > 1:
        oracle = stats.chisquare(np.array(obs, dtype=np.float64), len(present) * pi)
        assert close(res.chi2_stat[0], float(oracle.statistic)), (res.chi2_stat[0], oracle.statistic)
        assert abs(res.chi2_pvalue[0] - float(oracle.pvalue)) <= TOL, (res.chi2_pvalue[0], oracle.pvalue)
    else:
        assert res.chi2_stat[0] == 0.0 and res.chi2_pvalue[0] == 1.0
    js = float(np.nan_to_num(jensenshannon(obs, ref_counts, base=2)))
    assert abs(res.js[0] - js) <= TOL


def test_categorical_codes_encoding():
    """Window values encode to the profile's category index, -1 for missing and K for unseen categories."""
    profile = build_profile({"s": np.array(["b", "a", None, "b"], dtype=object),
                             "flag": np.array([True, False, True, True])})
    assert profile.categorical[0].categories == ["a", "b"] and profile.categorical[0].counts == [1, 2]
    assert profile.categorical[1].categories == [0, 1]
    codes = profile.categorical_codes({"s": np.array(["a", "zz", None, "b", np.nan], dtype=object),
                                       "flag": np.ma.masked_array([True, False, True, False, True],
                                                                  mask=[0, 0, 1, 0, 0])})
    assert codes.tolist() == [[0, 1], [2, 0], [-1, -1], [1, 0], [-1, 1]]


def test_categorical_empty_window_and_codes_matrix():
    """An empty window of codes gives no data; a codes matrix is accepted as is."""
    profile = build_profile({"c": np.array(["x", "y", "y"])})
    empty = K.categorical_drift(profile, np.empty((0, 1), dtype=np.int64))
    assert not empty.has_data[0] and math.isnan(empty.missing_rate[0])
    res = K.categorical_drift(profile, np.array([[0], [1], [1], [5], [-1]]))
    assert res.n[0] == 4 and res.n_unseen[0] == 1 and res.missing_rate[0] == 0.2 and res.chi2_dof[0] == 2


# ---------------------------------------------------------------------------------------------
# Multiple testing and verdict
# ---------------------------------------------------------------------------------------------

PVALS = st.one_of(st.sampled_from([0.0, 0.001, 0.01, 0.04, 0.05, 0.5, 1.0]), st.floats(0.0, 1.0))


@SETTINGS
@given(ps=st.lists(PVALS, min_size=0, max_size=40), nan_mask=st.lists(st.booleans(), min_size=40, max_size=40))
def test_benjamini_hochberg_matches_scipy(ps, nan_mask):
    """BH-adjusted p-values equal scipy's false_discovery_control(method='bh'); NaN p-values are skipped, stay NaN."""
    p = np.array(ps, dtype=np.float64)
    with_nan = p.copy()
    with_nan[np.array(nan_mask[:len(ps)], dtype=bool)] = np.nan
    for arr in (p, with_nan):
        ours = K.benjamini_hochberg(arr)
        valid = ~np.isnan(arr)
        assert np.array_equal(np.isnan(ours), ~valid)
        if valid.sum():
            theirs = np.atleast_1d(stats.false_discovery_control(arr[valid], method="bh"))
            assert np.allclose(ours[valid], theirs, rtol=0, atol=1e-12)


@SETTINGS
@given(data=st.data(), n_rows=st.integers(1, 6), n_features=st.integers(0, 15))
def test_benjamini_hochberg_by_rows_equals_each_row_alone(data, n_rows, n_features):
    """A 2-D array is a family per row: each row comes out as scipy's adjustment of that row alone (NaN skipped)."""
    values = data.draw(st.lists(st.one_of(PVALS, st.just(math.nan)), min_size=n_rows * n_features, max_size=n_rows * n_features))
    p = np.array(values, dtype=np.float64).reshape(n_rows, n_features)
    ours = K.benjamini_hochberg(p)
    assert ours.shape == p.shape
    for row, got in zip(p, ours):
        valid = ~np.isnan(row)
        assert np.array_equal(np.isnan(got), ~valid)
        if valid.sum():
            theirs = np.atleast_1d(stats.false_discovery_control(row[valid], method="bh"))
            assert np.allclose(got[valid], theirs, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got, K.benjamini_hochberg(row))  # the 1-D call is the same computation


def test_benjamini_hochberg_rejects_invalid():
    """P-values outside [0, 1] are refused."""
    with pytest.raises(ValueError):
        K.benjamini_hochberg([0.2, 1.5])
    with pytest.raises(ValueError):
        K.benjamini_hochberg([[0.2], [-0.1]])
    with pytest.raises(ValueError, match="1-D"):
        K.benjamini_hochberg(np.zeros((2, 2, 2)))


def test_pvalue_drift_and_verdict():
    """Features drift when BH-adjusted p <= alpha; the dataset when their share among features with data >= share."""
    p = np.array([0.001, 0.002, 0.9, np.nan])
    flags = K.pvalue_drift(p, alpha=0.05)
    assert flags.tolist() == [True, True, False, False]
    has_data = ~np.isnan(p)
    v = K.dataset_verdict(flags, has_data, drift_share=2 / 3)
    assert v.drifted and v.n_evaluated == 3 and v.n_drifted == 2 and v.share_drifted == pytest.approx(2 / 3)
    v = K.dataset_verdict(flags, has_data, drift_share=0.7)
    assert not v.drifted
    assert not K.dataset_verdict([True, False], [False, False]).drifted
    assert K.dataset_verdict([True, True, False, False]).drifted          # 0.5 >= 0.5 (default share)
    with pytest.raises(ValueError):
        K.dataset_verdict([True], drift_share=0.0)


@settings(max_examples=100, deadline=None)
@given(flags=st.lists(st.booleans(), max_size=20), data=st.data(), share=st.floats(0.01, 1.0))
def test_verdict_share_property(flags, data, share):
    """The verdict is exactly 'drifted among evaluated / evaluated >= share', ignoring features without data."""
    has = data.draw(st.lists(st.booleans(), min_size=len(flags), max_size=len(flags)))
    v = K.dataset_verdict(flags, has, drift_share=share)
    n_eval = sum(has)
    n_drift = sum(f and h for f, h in zip(flags, has))
    assert v.drifted == (n_eval > 0 and n_drift / n_eval >= share)
    assert v.feature_drifted.tolist() == [f and h for f, h in zip(flags, has)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_windows_in_one_call_equal_each_window_alone(sizes, seed):
    """numeric/categorical_drift_windows over consecutive windows (empty ones too) give exactly what one call per window gives."""
    table = mixed_table()
    profile = build_profile(table, categorical={"code"})
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    idx = rng.integers(0, 200, n)
    window = {k: v[idx] for k, v in table.items()}
    window["x"] = window["x"] + rng.normal(scale=0.5, size=n)  # some drift, some ties with the reference
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    numeric = K.numeric_drift_windows(profile, window, bounds)
    categorical = K.categorical_drift_windows(profile, window, bounds)
    assert len(numeric) == len(categorical) == len(sizes)
    for w in range(len(sizes)):
        alone = {k: v[bounds[w]:bounds[w + 1]] for k, v in window.items()}
        assert_results_equal(numeric[w], K.numeric_drift(profile, alone))
        assert_results_equal(categorical[w], K.categorical_drift(profile, alone))


@pytest.mark.parametrize("bounds", [[0], [1, 10], [0, 5, 3, 10], [0, 9], [[0, 10]]])
def test_window_bounds_are_checked(bounds):
    profile = build_profile({"x": np.arange(20.0)})
    with pytest.raises(ValueError, match="window bounds"):
        K.numeric_drift_windows(profile, np.zeros((10, 1)), bounds)


# ---------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------


def mixed_table() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=200)
    x[::17] = np.nan
    return {
        "x": x,
        "const": np.full(200, 4.0),
        "empty": np.full(200, np.nan),
        "i": rng.integers(0, 3, 200),
        "s": np.array([["u", "v", None, "w"][k % 4] for k in range(200)], dtype=object),
        "b": rng.random(200) < 0.3,
        "code": rng.integers(0, 4, 200),
    }


def assert_results_equal(a, b) -> None:
    for field in a.__slots__:
        x, y = getattr(a, field), getattr(b, field)
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), field
        else:
            assert x == y, field


@pytest.mark.parametrize("codec", [msgspec.json, msgspec.msgpack])
def test_profile_roundtrip_is_exact(codec):
    """A profile survives msgspec JSON and MessagePack unchanged, and drift on the decoded copy is identical."""
    profile = build_profile(mixed_table(), categorical={"code"})
    assert profile.numeric_names == ["x", "const", "empty", "i"]
    assert profile.categorical_names == ["s", "b", "code"]
    decoded = codec.decode(codec.encode(profile), type=ReferenceProfile)
    assert decoded == profile
    assert np.array_equal(decoded.sample("x"), profile.sample("x"))
    window = {k: v[:50] for k, v in mixed_table().items()}
    assert_results_equal(K.numeric_drift(decoded, window), K.numeric_drift(profile, window))
    assert_results_equal(K.categorical_drift(decoded, window), K.categorical_drift(profile, window))


def test_profile_contents():
    """The profile holds the sorted finite sample, population std, mean and missing rate of each numeric column."""
    table = mixed_table()
    profile = build_profile(table)
    x = table["x"]
    assert np.array_equal(profile.sample("x"), np.sort(x[np.isfinite(x)]))
    f = profile.numeric[0]
    assert f.mean == pytest.approx(np.nanmean(x)) and f.std == pytest.approx(np.nanstd(x))
    assert f.missing_rate == pytest.approx(np.isnan(x).mean())
    assert profile.categorical[0].missing_rate == 0.25


def test_corrupt_profile_is_rejected():
    """Decoding a profile whose offsets do not match its arrays raises a validation error."""
    raw = msgspec.json.decode(msgspec.json.encode(build_profile({"x": np.arange(5.0)})))
    raw["sample_offsets"] = [0, 4]
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(raw), type=ReferenceProfile)


def test_profile_from_parquet_matches_dict(tmp_path: Path):
    """A Parquet reference read through DuckDB (NULL = missing) profiles like the same table given as arrays."""
    import duckdb

    path = tmp_path / "ref.parquet"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT CASE WHEN i % 5 = 0 THEN NULL ELSE i * 0.5 END AS x,"
            " CASE WHEN i % 7 = 0 THEN NULL ELSE chr(CAST(97 + i % 3 AS INTEGER)) END AS s FROM range(100) t(i))"
            f" TO '{path}' (FORMAT PARQUET)")
    from_parquet = build_profile_from_parquet(path)
    i = np.arange(100)
    x = np.where(i % 5 == 0, np.nan, i * 0.5)
    s = np.array([None if k % 7 == 0 else chr(97 + k % 3) for k in i], dtype=object)
    assert from_parquet == build_profile({"x": x, "s": s})


def test_warm_up_compiles_every_kernel():
    """warm_up runs every kernel on tiny inputs, the streaming detectors' included (a fresh process, so
    nothing else compiled them first), and reports the seconds it took."""
    code = (
        "from shepherd.monitoring import kernels as K\n"
        "from shepherd.monitoring.detectors import ADWIN, DDM, PageHinkley\n"
        "assert K.warm_up() >= 0.0\n"
        "print(sorted(c.__name__ for c in (ADWIN, DDM, PageHinkley) if not c._update_many.signatures))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
