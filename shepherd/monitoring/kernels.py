"""Drift kernels: every statistic of one window against a reference profile, in one parallel Numba pass.

Layout. The current window is a 2-D float64 matrix (rows x numeric features, C order, missing =
not finite) or int64 codes (rows x categorical features, see `profile.categorical_codes`); the
reference comes from a `ReferenceProfile`, whose concatenated sorted samples, bin edges and bin
proportions (+ offsets) are read by the kernels without copying. One `prange` iteration handles
one feature: it copies the finite values of its column into a contiguous buffer, sorts it once
(an in-place LSD radix sort, `_sort_finite`, faster than np.sort), then computes KS and
Wasserstein-1 in one merge pass over the two sorted arrays and the bin counts in one pass over
the sorted window and the edges. Nothing loops over features in Python. Prediction drift is the
same call on the model's outputs (profile the reference predictions like any other column).

Numeric statistics (per feature):
  * PSI on the profile's bins (binning rule: `profile` module docstring), natural log:
        PSI = sum_b (c_b - r_b) * ln(c_b / r_b),  c_b = max(cur_b, 1e-4),  r_b = max(ref_b, 1e-4)
    Empty-bin rule: each proportion is floored at PSI_EPSILON = 1e-4 (no renormalisation) before
    the formula, so an empty bin contributes a finite amount and a bin empty on both sides
    contributes 0. The test oracle applies the same rule with plain numpy.
  * KS: two-sample statistic D = max |F_cur - F_ref| over all observed values (ties handled as in
    `scipy.stats.ks_2samp`), and its two-sided p-value computed as scipy's default method="auto"
    (scipy >= 1.11):
      - max(n_cur, n_ref) <= 10_000: the exact distribution (n_cur == n_ref: the alternating sum
        for paths outside the square; otherwise Hodges' inside method with Viehmann's 1 - p
        recursion); the statistic is then reported as round(D * lcm) / lcm, as scipy does;
      - larger samples (or an exact value outside [0, 1]): the asymptotic method, the one-sample
        two-sided KS distribution `kstwo.sf(D, round(en))`, en = n_cur * n_ref / (n_cur + n_ref),
        with scipy's algorithm selection (Simard & L'Ecuyer: Ruben-Gambino, Durbin matrix (MTW),
        Pomeranz, Pelz-Good, 2 * Smirnov).
    Internal differences only: scipy sums Smirnov's one-sided tail in double-double arithmetic;
    here the same positive Birnbaum-Tingey terms are Loader saddle-point binomials in double
    (agreement ~1e-13 relative, far into the tail), and matrix products are loops, not BLAS.
    (round(en) == 0 would need one value on each side, which the exact path always answers; it is
    guarded with 1.0 where scipy would return NaN.) Tests compare against scipy at 1e-9.
    The exact p-value for unequal sizes is most of a window's kernel time, and depends on the
    sizes and h = round(D * lcm) alone: the kernel keeps those it computed in a fixed-size table
    (`KsMemo`, "Exact p-values, memoised" below) and reads them back, bit for bit the same.
  * Wasserstein-1 (`scipy.stats.wasserstein_distance`) and W1 / std(reference) with the
    population std (ddof=0); a constant reference (std 0) gives 0.0 when W1 == 0, +inf otherwise.
  * Jensen-Shannon distance on the PSI bins, base 2 (so it lies in [0, 1]), equal to
    `scipy.spatial.distance.jensenshannon(cur_counts, ref_counts, base=2)`; no epsilon (JS is
    finite with empty bins).
Categorical statistics (per feature, buckets = the K reference categories, plus one "unseen"
bucket when the window holds categories the reference never saw):
  * chi-square goodness of fit (`scipy.stats.chisquare(f_obs, f_exp)`): expected proportions are
    the reference frequencies floored at CHI2_FLOOR = 1e-4 and renormalised to sum to 1 (so the
    unseen bucket, whose reference frequency is 0, gets a small positive expectation instead of a
    division by zero), times the number of non-missing values in the window; dof = buckets - 1;
    p = chi2.sf via the regularised upper incomplete gamma function. A single bucket (dof 0) gives
    statistic 0 and p-value 1.
  * Jensen-Shannon distance (base 2) between window and reference bucket frequencies.
Both: missing rate of the window (missing / rows) next to the reference's, the count of
non-missing values `n`, and `has_data`: False for an empty window, a feature with no non-missing
value in the window, or one without reference values. Where has_data is False the statistics and
p-values are NaN (never reported as valid); missing_rate is NaN only for a window with no rows.

Multiple testing: `benjamini_hochberg` adjusts p-values across features (scipy's
`false_discovery_control(method="bh")`; NaN p-values -- features without data -- are left out of
the count and stay NaN); `pvalue_drift` flags adjusted p <= alpha; `dataset_verdict` declares the
dataset drifted when the share of drifted features among those with data is >= `drift_share`.

Compilation: kernels are compiled lazily with cache=True; call `warm_up()` (e.g. from a background
thread at start-up) so the first real window doesn't pay for it. Kernel launches are serialised by
a lock (Numba's workqueue threading layer is not thread-safe; each launch already uses every core).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import int64, njit, prange, uint64

from shepherd.monitoring.profile import ReferenceProfile

PSI_EPSILON = 1e-4
CHI2_FLOOR = 1e-4
KS_EXACT_MAX_N = 10_000            # scipy's MAX_AUTO_N: exact p-values up to this sample size
KS_MEMO_SLOTS = 1 << 18            # slots of the exact KS p-value table (KsMemo): up to 131,072 p-values, 4 MiB

_LOCK = threading.Lock()

_E128 = 2.0 ** 128
_EM128 = 2.0 ** -128
_LOG_2PI = math.log(2 * math.pi)
_SQRT2PI = math.sqrt(2 * math.pi)
_SQRT3 = math.sqrt(3.0)
_PI2 = math.pi ** 2
_PI4 = math.pi ** 4
_PI6 = math.pi ** 6
_LN2 = math.log(2.0)
_MINLOG = -7.08396418532264106224e2      # log(2**-1022)
_EPS = 2.220446049250313e-16
_STIRLING = np.array([-2.955065359477124183e-2, 6.4102564102564102564e-3,
                      -1.9175269175269175269e-3, 8.4175084175084175084e-4,
                      -5.952380952380952381e-4, 7.9365079365079365079e-4,
                      -2.7777777777777777778e-3, 8.3333333333333333333e-2])


# ============================================================================================
# Special functions (scalar, called from the parallel kernels)
# ============================================================================================


@njit(cache=True)
def _round_half_even(x: float) -> int:
    """numpy.round / Python round of a non-negative float to an int (ties to even)."""
    r = math.floor(x)
    diff = x - r
    ri = int(r)
    if diff > 0.5 or (diff == 0.5 and ri % 2 == 1):
        ri += 1
    return ri


@njit(cache=True)
def _ldexp(p: float, e: int) -> float:
    """p * 2**e without intermediate overflow or premature underflow of the power of two."""
    while e > 960:
        p *= 2.0 ** 960
        e -= 960
    while e < -960:
        p *= 2.0 ** -960
        e += 960
    return p * 2.0 ** e


@njit(cache=True)
def _clip01(p: float) -> float:
    return min(max(p, 0.0), 1.0)


@njit(cache=True)
def _log_nfact_div_npow(n: int) -> float:
    """log(n! / n**n) by Stirling's series."""
    rn = 1.0 / n
    x = rn / n
    y = 0.0
    for c in _STIRLING:
        y = y * x + c
    return math.log(n) / 2 - n + _LOG_2PI / 2 + rn * y


@njit(cache=True)
def _stirlerr(n: float) -> float:
    """log(n!) - log(sqrt(2 pi n) (n/e)^n) for integer n >= 1 (Loader 2000)."""
    if n <= 15.0:
        return math.lgamma(n + 1.0) - (n + 0.5) * math.log(n) + n - 0.5 * _LOG_2PI
    nn = n * n            # Stirling series 1/12n - 1/360n^3 + 1/1260n^5 - 1/1680n^7 + 1/1188n^9
    return (1.0 / 12 - (1.0 / 360 - (1.0 / 1260 - (1.0 / 1680 - 1.0 / 1188 / nn) / nn) / nn) / nn) / n


@njit(cache=True)
def _bd0(x: float, m: float) -> float:
    """x log(x/m) + m - x without cancellation (Loader 2000)."""
    if abs(x - m) < 0.1 * (x + m):
        v = (x - m) / (x + m)
        s = (x - m) * v
        ej = 2 * x * v
        v2 = v * v
        for j in range(1, 1000):
            ej *= v2
            s1 = s + ej / (2 * j + 1)
            if s1 == s:
                return s1
            s = s1
        return s
    return x * math.log(x / m) + m - x


@njit(cache=True)
def _log_binom_pmf(k: int, n: int, np_: float, nq: float) -> float:
    """log of C(n,k) p^k q^(n-k) for 0 < k < n, given n*p and n*q (Loader's saddle-point form, ~1e-15 relative)."""
    lc = (_stirlerr(float(n)) - _stirlerr(float(k)) - _stirlerr(float(n - k))
          - _bd0(float(k), np_) - _bd0(float(n - k), nq))
    lf = _LOG_2PI + math.log(k) + math.log1p(-k / n)
    return lc - 0.5 * lf


@njit(cache=True)
def _smirnov_sf(n: int, x: float) -> float:
    """One-sided KS tail Pr(D+_n >= x) (scipy.special.smirnov) for the regimes kstwo uses it in.

    Birnbaum-Tingey: sum_{v=0}^{floor(n(1-x))} x/(x+v/n) * BinomPmf(v; n, x+v/n); all terms are
    positive; each is evaluated with Loader's saddle-point binomial (relative error ~1e-14), with the
    same special cases and early stop as scipy's xsf (which sums in double-double arithmetic).
    """
    if n == 1:
        return _clip01(1.0 - x)
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    nx = n * x
    nxfl = int(math.floor(nx))
    alpha = nx - nxfl
    if nxfl == 0 or (nxfl == 1 and alpha == 0.0):
        return _clip01(1.0 - x * (1.0 + x) ** (n - 1.0))
    if -2.0 * n * x * x < _MINLOG:
        return 0.0
    if nxfl >= n - 1:
        return _clip01((1.0 - x) ** float(n))
    if n > 1_000_000:
        logp = -((6.0 * n * x + 1) ** 2) / 18.0 / n
        if logp < -_LN2:
            return _clip01(math.exp(logp))
        return _clip01(1.0 + math.expm1(logp))
    n1mxfl = n - nxfl - (0 if alpha == 0.0 else 1)
    if alpha == 0.0:
        n1mxfl -= 1
    n_terms = n1mxfl + 1
    vmid = n // 2
    total = math.exp(n * math.log1p(-x)) / x          # v = 0 term, without the common factor x
    for v in range(1, n_terms):
        t1x = v / n + x                                 # x + v/n
        nq = (n - v) - nx                               # n (1 - x - v/n)
        a = 0.0
        if nq > 0.0:
            a = math.exp(_log_binom_pmf(v, n, v + nx, nq)) / t1x
        total += a
        if a != 0.0:
            if 4.0 * (n_terms - v) * a < _EPS * total and v != n_terms - 1:
                break
        elif v > vmid:
            break
    return _clip01(x * total)


@njit(cache=True)
def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m = a.shape[0]
    out = np.zeros((m, m))
    for i in range(m):
        for k in range(m):
            aik = a[i, k]
            if aik != 0.0:
                for j in range(m):
                    out[i, j] += aik * b[k, j]
    return out


@njit(cache=True)
def _kolmogn_dmtw_cdf(n: int, d: float) -> float:
    """Pr(D_n <= d) by Durbin's matrix (Marsaglia-Tsang-Wang), as scipy's _kolmogn_DMTW."""
    if d >= 1.0:
        return 1.0
    nd = n * d
    if nd <= 0.5:
        return 0.0
    k = int(math.ceil(nd))
    h = k - nd
    m = 2 * k - 1
    H = np.zeros((m, m))
    v = np.empty(m)
    w = np.empty(m)
    fac = 1.0
    for j in range(1, m + 1):
        w[j - 1] = fac
        fac /= j
        v[j - 1] = (1.0 - h ** float(j)) * fac
    tt = max(2 * h - 1.0, 0.0) ** float(m) - 2 * h ** float(m)
    v[m - 1] = (1.0 + tt) * fac
    for i in range(1, m):
        for r in range(i - 1, m):
            H[r, i] = w[r - i + 1]
    for r in range(m):
        H[r, 0] = v[r]
    for c in range(m):
        H[m - 1, c] = v[m - 1 - c]
    Hpwr = np.eye(m)
    nn = n
    expnt = 0
    hexpnt = 0
    while nn > 0:
        if nn % 2:
            Hpwr = _matmul(Hpwr, H)
            expnt += hexpnt
        nn = nn // 2
        if nn == 0:
            break
        H = _matmul(H, H)
        hexpnt *= 2
        if abs(H[k - 1, k - 1]) > _E128:
            H /= _E128
            hexpnt += 128
    p = Hpwr[k - 1, k - 1]
    for i in range(1, n + 1):
        p = i * p / n
        if abs(p) < _EM128:
            p *= _E128
            expnt -= 128
    if expnt != 0:
        p = _ldexp(p, expnt)
    return _clip01(p)


@njit(cache=True)
def _pomeranz_j1j2(i: int, n: int, ll: int, ceilf: int, roundf: int) -> tuple[int, int]:
    if i == 0:
        j1 = -ll - ceilf - 1
        j2 = ll + ceilf - 1
    else:
        half = (i + 1) // 2
        if (i + 1) % 2 == 0:
            if half == n + 1:
                j1 = n - ll - ceilf - 1
                j2 = n + ll + ceilf - 1
            else:
                j1 = half - 1 - ll - roundf - 1
                j2 = half + ll - 1 + ceilf - 1
        else:
            j1 = half - 1 - ll - 1
            j2 = half + ll + roundf - 1
    return max(j1 + 2, 0), min(j2, n)


@njit(cache=True)
def _kolmogn_pomeranz_cdf(n: int, x: float) -> float:
    """Pr(D_n <= x) by Pomeranz's recursion, as scipy's _kolmogn_Pomeranz."""
    t = n * x
    ll = int(math.floor(t))
    f = t - ll
    g = min(f, 1.0 - f)
    ceilf = 1 if f > 0 else 0
    roundf = 1 if f > 0.5 else 0
    npwrs = 2 * (ll + 1)
    gpower = np.empty(npwrs)
    twogpower = np.empty(npwrs)
    onem2gpower = np.empty(npwrs)
    gpower[0] = 1.0
    twogpower[0] = 1.0
    onem2gpower[0] = 1.0
    expnt = 0
    g_n, two_g_n, one_m2g_n = g / n, 2 * g / n, (1 - 2 * g) / n
    for m in range(1, npwrs):
        gpower[m] = gpower[m - 1] * g_n / m
        twogpower[m] = twogpower[m - 1] * two_g_n / m
        onem2gpower[m] = onem2gpower[m - 1] * one_m2g_n / m
    V0 = np.zeros(npwrs)
    V1 = np.zeros(npwrs)
    V1[0] = 1.0
    V0s = 0
    V1s = 0
    j1, j2 = _pomeranz_j1j2(0, n, ll, ceilf, roundf)
    for i in range(1, 2 * n + 2):
        k1 = j1
        V0, V1 = V1, V0
        V0s, V1s = V1s, V0s
        V1[:] = 0.0
        j1, j2 = _pomeranz_j1j2(i, n, ll, ceilf, roundf)
        if i == 1 or i == 2 * n + 1:
            pwrs = gpower
        elif i % 2:
            pwrs = twogpower
        else:
            pwrs = onem2gpower
        ln2 = j2 - k1 + 1
        if ln2 > 0:
            a0 = k1 - V0s
            la = min(ln2, npwrs - a0)
            lb = min(ln2, npwrs)
            conv_start = j1 - k1
            conv_len = j2 - j1 + 1
            vmax = 0.0
            for q in range(conv_len):
                kk = conv_start + q
                s = 0.0
                for ia in range(max(0, kk - lb + 1), min(kk, la - 1) + 1):
                    s += V0[a0 + ia] * pwrs[kk - ia]
                V1[q] = s
            for q in range(npwrs):
                vmax = max(vmax, V1[q])
            if 0 < vmax < _EM128:
                for q in range(npwrs):
                    V1[q] *= _E128
                expnt -= 128
            V1s = V0s + j1 - k1
    ans = V1[n - V1s]
    for m in range(1, n + 1):
        if abs(ans) > _E128:
            ans *= _EM128
            expnt += 128
        ans *= m
    if expnt != 0:
        ans = _ldexp(ans, expnt)
    return _clip01(ans)


@njit(cache=True)
def _kolmogn_pelzgood_cdf(n: int, x: float) -> float:
    """Pelz-Good approximation of Pr(D_n <= x), as scipy's _kolmogn_PelzGood (unclipped)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    z = math.sqrt(n) * x
    zsq = z ** 2.0
    z3 = z ** 3.0
    z4 = z ** 4.0
    z6 = z ** 6.0
    qlog = -_PI2 / 8 / zsq
    if qlog < -708:
        return 0.0
    q = math.exp(qlog)
    k1a = -zsq
    k1b = _PI2 / 4
    k2a = 6 * z6 + 2 * z4
    k2b = (2 * z4 - 5 * zsq) * _PI2 / 4
    k2c = _PI4 * (1 - 2 * zsq) / 16
    k3d = _PI6 * (5 - 30 * zsq) / 64
    k3c = _PI4 * (-60 * zsq + 212 * z4) / 16
    k3b = _PI2 * (135 * z4 - 96 * z6) / 4
    k3a = -30 * z6 - 90 * z ** 8.0
    K0 = 0.0
    K1 = 0.0
    K2 = 0.0
    K3 = 0.0
    maxk = int(math.ceil(16 * z / math.pi))
    for k in range(maxk, 0, -1):
        m = 2 * k - 1
        msq = float(m * m)
        m4 = msq * msq
        m6 = m4 * msq
        qpower = q ** float(8 * k)
        K0 = K0 * qpower + 1.0
        K1 = K1 * qpower + (k1a + k1b * msq)
        K2 = K2 * qpower + (k2a + k2b * msq + k2c * m4)
        K3 = K3 * qpower + (k3a + k3b * msq + k3c * m4 + k3d * m6)
    K0 = K0 * q * _SQRT2PI / z
    K1 = K1 * q * _SQRT2PI / (6 * z4)
    K2 = K2 * q * _SQRT2PI / (72 * z ** 7.0)
    K3 = K3 * q * _SQRT2PI / (6480 * z ** 10.0)
    q = math.exp(-_PI2 / 2 / zsq)
    sqrt3z = _SQRT3 * z
    k2extra = 0.0
    k3extra = 0.0
    for k in range(maxk, 0, -1):
        ksq = float(k * k)
        qp = q ** ksq
        kspi = math.pi * k
        k2extra += ksq * qp
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ksq * qp
    K2 += k2extra * (_PI2 * _SQRT2PI / (-36 * z3))
    K3 += k3extra * (_PI2 * _SQRT2PI / (216 * z6))
    nf = float(n)
    return K0 + K1 / nf ** 0.5 + K2 / nf + K3 / nf ** 1.5


@njit(cache=True)
def kstwo_sf(n: int, x: float) -> float:
    """Survival function of the one-sample two-sided KS statistic D_n (scipy.stats.kstwo.sf(x, n))."""
    if n <= 0:
        return np.nan
    if x >= 1.0:
        return 0.0
    if x <= 0.0:
        return 1.0
    t = n * x
    if t <= 1.0:
        if t <= 0.5:
            return 1.0
        if n <= 140:
            prob = 1.0
            for i in range(1, n + 1):
                prob *= i * (1.0 / n) * (2 * t - 1)
        else:
            prob = math.exp(_log_nfact_div_npow(n) + n * math.log(2 * t - 1))
        return _clip01(1.0 - _clip01(prob))
    if t >= n - 1:
        return _clip01(2 * (1.0 - x) ** float(n))
    if x >= 0.5:
        return _clip01(2 * _smirnov_sf(n, x))
    nxsq = t * x
    if n <= 140:
        if nxsq <= 0.754693:
            return _clip01(1.0 - _kolmogn_dmtw_cdf(n, x))
        if nxsq <= 4:
            return _clip01(1.0 - _kolmogn_pomeranz_cdf(n, x))
        return _clip01(2 * _smirnov_sf(n, x))
    if nxsq >= 370.0:
        return 0.0
    if nxsq >= 2.2:
        return _clip01(2 * _smirnov_sf(n, x))
    if n <= 100000 and n * x ** 1.5 <= 1.4:
        cdf = _kolmogn_dmtw_cdf(n, x)
    else:
        cdf = _kolmogn_pelzgood_cdf(n, x)
    return _clip01(1.0 - _clip01(cdf))


@njit(cache=True)
def _ks_outside_square(n: int, h: int) -> float:
    """Pr(D_{n,n} >= h/n): the alternating binomial sum in Horner form."""
    P = 0.0
    k = n // h
    while k >= 0:
        p1 = 1.0
        for j in range(h):
            p1 = (n - k * h - j) * p1 / (n + k * h + j + 1)
        P = p1 * (1.0 - P)
        k -= 1
    return 2 * P


@njit(cache=True, fastmath={"contract"})
def _ks_cells(V: np.ndarray, recip: np.ndarray, i: int, fi: float, j0: int, j1: int, val: float) -> float:
    """Cells j0..j1-1 of row i of `_ks_inside_method`, left to right from `val` (the cell left of
    j0); returns the last. Sliced views and an unsigned count spare Numba's negative-index checks,
    and j is carried as a float (exact below 2**53) instead of converted each cell."""
    fj = float(j0)
    rr = recip[i + j0:i + j1]
    vv = V[j0:j1]
    for k in range(uint64(max(j1 - j0, 0))):
        r = rr[k]
        val = val * (fj * r) + vv[k] * (fi * r)
        vv[k] = val
        fj += 1.0
    return val


@njit(cache=True)
def _ks_band(i: int, n: int, mg: int, ng: int, h: int) -> tuple[int, int]:
    """Row i's band, columns lo..hi-1."""
    return min(max((ng * i - h) // mg + 1, 0), n), min(-((-(ng * i + h)) // mg), n + 1)


@njit(cache=True, fastmath={"contract"})
def _ks_inside_method(m: int, n: int, g: int, h: int) -> float:
    """Pr(D_{m,n} >= h/lcm): lattice paths leaving the band, via the 1 - p recursion (Hodges, Viehmann).

    scipy's `_compute_outer_prob_inside_method`, cell for cell: V[j] holds the probability that a
    path to (i, j) has left the band (1 outside it), and a band cell takes
        V(i, j) = (i V(i-1, j) + j V(i, j-1)) / (i + j).
    Written as V(i, j-1) * (j / (i+j)) + V(i-1, j) * (i / (i+j)), with 1/(i+j) from a table, the
    serial chain through a row is one multiply-add; the rest of a cell's work (the table load, two
    products) does not wait for the previous cell. Rows go in pairs: row i+1 runs one column
    behind row i, so that its cell (i+1, j-1) finds (i, j-1) just computed, and both use
    1/(i+j). Two independent chains per step: 1.5-1.8x faster than one row at a time, with every
    cell's arithmetic unchanged, so bit for bit the same result (tests/monitoring/test_kernels.py).
    Rows are the larger sample; V is indexed by absolute column j, so a cell above the previous
    row's band (never written since the start) still reads 1.
    """
    if m < n:
        m, n = n, m
    mg = m // g
    ng = n // g
    V = np.ones(n + 1)
    V[:min(-((-h) // mg), n + 1)] = 0.0  # row 0: the band's cells have not left it
    recip = np.empty(m + n + 1)
    recip[0] = 0.0
    for k in range(1, m + n + 1):
        recip[k] = 1.0 / k
    hi = 0
    i = 1
    while i <= m:
        lo, hi = _ks_band(i, n, mg, ng, h)
        if hi <= lo:
            return 1.0
        fi = float(i)
        val = 0.0 if lo == 0 else 1.0  # the cell left of the band has left it; at j = 0 there is none (j * r = 0)
        if i == m:  # the last row of an odd count, alone
            _ks_cells(V, recip, i, fi, lo, hi, val)
            break
        lo2, hi2 = _ks_band(i + 1, n, mg, ng, h)  # lo <= lo2, hi <= hi2
        # Row i alone up to column lo2, where row i+1 starts.
        alone = min(lo2 + 1, hi)
        val = _ks_cells(V, recip, i, fi, lo, alone, val)
        if hi2 <= lo2:
            return 1.0
        fi2 = fi + 1.0
        val2 = 0.0 if lo2 == 0 else 1.0
        # Row i at column j and row i+1 at column j-1, from the value row i just left there.
        left = val
        fj = float(alone)
        fj2 = fj - 1.0
        rr = recip[i + alone:i + hi]
        vv = V[alone - 1:hi]
        for k in range(uint64(max(hi - alone, 0))):
            r = rr[k]
            val = val * (fj * r) + vv[k + 1] * (fi * r)
            vv[k + 1] = val
            val2 = val2 * (fj2 * r) + left * (fi2 * r)
            vv[k] = val2
            left = val
            fj += 1.0
            fj2 += 1.0
        # Row i+1 alone past row i's band.
        _ks_cells(V, recip, i + 1, fi2, max(lo2, hi - 1), hi2, val2)
        hi = hi2
        i += 2
    return V[hi - 1]


@njit(cache=True)
def ks_pvalue(d: float, n1: int, n2: int) -> tuple[float, float]:
    """(statistic, two-sided p-value) of a two-sample KS statistic d, as scipy.stats.ks_2samp(method="auto")."""
    if d <= 0.0:
        return d, 1.0
    if max(n1, n2) <= KS_EXACT_MAX_N:
        g, lcm, h = _ks_lattice(d, n1, n2)
        d = h * 1.0 / lcm
        if h == 0:
            return d, 1.0
        if n1 != n2:
            return d, _ks_inside_pvalue(n1, n2, g, h, d)
        prob = _ks_outside_square(n1, h)
        if 0.0 <= prob <= 1.0:
            return d, prob
    return d, _ks_asymptotic(d, n1, n2)


@njit(cache=True)
def _ks_lattice(d: float, n1: int, n2: int) -> tuple[int, int, int]:
    """(gcd, lcm, h) of the exact path: the statistic is h / lcm, h = round(d * lcm) (half to even, as scipy)."""
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2
    return g, lcm, _round_half_even(d * lcm)


@njit(cache=True)
def _ks_inside_pvalue(n1: int, n2: int, g: int, h: int, d: float) -> float:
    """The p-value of the exact path for unequal sizes (d = h / lcm): the inside method, or the
    asymptotic one where its result falls outside [0, 1]. Symmetric in n1 and n2."""
    prob = _ks_inside_method(n1, n2, g, h)
    if 0.0 <= prob <= 1.0:
        return prob
    return _ks_asymptotic(d, n1, n2)


@njit(cache=True)
def _ks_asymptotic(d: float, n1: int, n2: int) -> float:
    big = float(max(n1, n2))
    small = float(min(n1, n2))
    en = big * small / (big + small)
    nr = _round_half_even(en)
    if nr == 0:
        return 1.0
    return _clip01(kstwo_sf(nr, d))


# -- Exact p-values, memoised ----------------------------------------------------------------
# For unequal sizes the exact p-value costs O(max(n1, n2) x band) cells: 77 µs a feature for a
# 1,000-row window against 398 reference rows, 230 µs against 5,000, 460 µs against 10,000 (the
# whole of a window's kernel time). It depends on (n1, n2, h) alone, h = round(D * lcm) an integer,
# and a version's windows keep asking for the same few thousand of them: every window of
# `window_rows` rows has n1 = window_rows, every feature without missing values has n2 = the
# reference's rows, and D of undrifted data stays in a narrow range. So the numeric kernel keeps
# them in a table (KsMemo) and computes only the keys it has not seen. A hit is the stored result
# of the same computation, bit for bit.

_KEY_N_BITS = 14                   # n1, n2 <= KS_EXACT_MAX_N < 2**14
_KEY_H_BITS = 27                   # h <= lcm <= 10,000 * 9,999 < 2**27


@njit(cache=True)
def _ks_key(n1: int, n2: int, h: int) -> int:
    """One positive int64 for (sizes, h): the larger size, the smaller, h."""
    return (max(n1, n2) << (_KEY_N_BITS + _KEY_H_BITS)) | (min(n1, n2) << _KEY_H_BITS) | h


@njit(cache=True)
def _ks_key_pvalue(key: int) -> float:
    """The exact p-value a key stands for (what ks_pvalue returns for those sizes and h)."""
    n1 = key >> (_KEY_N_BITS + _KEY_H_BITS)
    n2 = (key >> _KEY_H_BITS) & ((1 << _KEY_N_BITS) - 1)
    h = key & ((1 << _KEY_H_BITS) - 1)
    g = math.gcd(n1, n2)
    return _ks_inside_pvalue(n1, n2, g, h, h * 1.0 / ((n1 // g) * n2))


@njit(cache=True)
def _memo_slot(keys: np.ndarray, key: int) -> int:
    """The slot holding `key`, or the empty one (key 0) where it would go: open addressing, linear probing."""
    mask = keys.shape[0] - 1
    x = uint64(key) * uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the product's high bits mix every key bit
    i = int64(x >> uint64(32)) & mask
    while keys[i] != 0 and keys[i] != key:
        i = (i + 1) & mask
    return i


@njit(cache=True)
def _ks_memo_pvalue(d: float, n1: int, n2: int, keys: np.ndarray, vals: np.ndarray) -> tuple[float, float, int]:
    """ks_pvalue through the table: (statistic, p-value, 0), or (statistic, NaN, key) for an exact
    p-value not in it yet, or (statistic, p-value, -1) for one that was."""
    if d > 0.0 and n1 != n2 and max(n1, n2) <= KS_EXACT_MAX_N:
        _, lcm, h = _ks_lattice(d, n1, n2)
        if h > 0:
            key = _ks_key(n1, n2, h)
            i = _memo_slot(keys, key)
            if keys[i] == key:
                return h * 1.0 / lcm, vals[i], -1
            return h * 1.0 / lcm, np.nan, key
    d, p = ks_pvalue(d, n1, n2)
    return d, p, 0


@njit(cache=True)
def _ks_resolve(ksp: np.ndarray, ksk: np.ndarray, keys: np.ndarray, vals: np.ndarray, counts: np.ndarray) -> None:
    """Fill the p-values the table lacked (ksk > 0: their keys; both arrays windows x features), each
    distinct key computed once, in parallel, and store them. `counts` adds the pass's hits (ksk == -1)
    and computed keys. A table that would be more than half full is emptied first (probes stay
    short, and the keys in use come back within a pass or two), and keeps at most half its slots
    of this pass's keys. Called by the numeric kernel."""
    n_missing = 0
    for w in range(ksk.shape[0]):
        for f in range(ksk.shape[1]):
            if ksk[w, f] > 0:
                n_missing += 1
            elif ksk[w, f] == -1:
                counts[1] += 1
    if n_missing == 0:
        return
    missing = np.empty(n_missing, dtype=np.int64)
    k = 0
    for w in range(ksk.shape[0]):
        for f in range(ksk.shape[1]):
            if ksk[w, f] > 0:
                missing[k] = ksk[w, f]
                k += 1
    unique = np.unique(missing)
    pvals = _ks_key_pvalues(unique)
    for w in range(ksk.shape[0]):
        for f in range(ksk.shape[1]):
            if ksk[w, f] > 0:
                ksp[w, f] = pvals[np.searchsorted(unique, ksk[w, f])]
    counts[2] += unique.shape[0]
    room = keys.shape[0] // 2  # at most half full
    if counts[0] + unique.shape[0] > room:
        keys[:] = 0
        counts[0] = 0
    for u in range(min(unique.shape[0], room)):
        i = _memo_slot(keys, unique[u])
        keys[i] = unique[u]  # a new key: the table lacked every one
        vals[i] = pvals[u]
        counts[0] += 1


@njit(parallel=True, cache=True)
def _ks_key_pvalues(unique: np.ndarray) -> np.ndarray:
    pvals = np.empty(unique.shape[0])
    for u in prange(unique.shape[0]):
        pvals[u] = _ks_key_pvalue(unique[u])
    return pvals


@njit(cache=True)
def chi2_sf(x: float, dof: int) -> float:
    """Chi-square survival function Q(dof/2, x/2) (series below a+1, Lentz continued fraction above)."""
    if dof <= 0:
        return np.nan
    if x <= 0.0:
        return 1.0
    if not math.isfinite(x):
        return 0.0
    a = dof / 2.0
    y = x / 2.0
    logpre = -y + a * math.log(y) - math.lgamma(a)
    if y < a + 1.0:
        ap = a
        term = 1.0 / a
        s = term
        for _ in range(1_000_000):
            ap += 1.0
            term *= y / ap
            s += term
            if abs(term) < abs(s) * 1e-17:
                break
        return _clip01(1.0 - s * math.exp(logpre))
    tiny = 1e-300
    b = y + 1.0 - a
    c = 1.0 / tiny
    dd = 1.0 / b
    hh = dd
    for i in range(1, 1_000_000):
        an = -i * (i - a)
        b += 2.0
        dd = an * dd + b
        if abs(dd) < tiny:
            dd = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        dd = 1.0 / dd
        delta = dd * c
        hh *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return _clip01(math.exp(logpre) * hh)


# ============================================================================================
# Per-feature passes
# ============================================================================================


@njit(cache=True)
def _sort_finite(a: np.ndarray) -> None:
    """Sort finite float64 values in place: LSD radix sort on order-preserving 64-bit keys (11-bit digits).

    About 5x faster than Numba's quicksort and 2-3x faster than np.sort from 1e5 values up; passes in
    which every key has the same digit (e.g. the exponent bits of most data) are skipped. Small
    arrays use the builtin sort. -0.0 sorts before +0.0, which compare equal, so the merges see ties.
    """
    n = a.shape[0]
    if n < 512:
        a.sort()
        return
    keys = a.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    allones = ~np.uint64(0)
    for i in range(n):                       # float order -> unsigned order
        k = keys[i]
        keys[i] = k ^ allones if k & sign else k | sign
    mask = np.uint64(2047)
    counts = np.zeros((6, 2048), dtype=np.int64)
    for i in range(n):
        k = keys[i]
        for p in range(6):
            counts[p, (k >> np.uint64(11 * p)) & mask] += 1
    tmp = np.empty(n, dtype=np.uint64)
    src = keys
    dst = tmp
    swapped = False
    pos = np.empty(2048, dtype=np.int64)
    for p in range(6):
        c = counts[p]
        trivial = False
        for d in range(2048):
            if c[d] != 0:
                trivial = c[d] == n
                break
        if trivial:
            continue
        total = 0
        for d in range(2048):
            pos[d] = total
            total += c[d]
        shift = np.uint64(11 * p)
        for i in range(n):
            k = src[i]
            d = (k >> shift) & mask
            dst[pos[d]] = k
            pos[d] += 1
        src, dst = dst, src
        swapped = not swapped
    if swapped:
        keys[:] = src
    for i in range(n):                       # back to float bits
        k = keys[i]
        keys[i] = k ^ sign if k & sign else k ^ allones


@njit(cache=True)
def _ks_w1(cur: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """KS statistic and Wasserstein-1 distance of two sorted samples, in one merge pass."""
    n1 = cur.shape[0]
    n2 = ref.shape[0]
    i = 0
    j = 0
    d = 0.0
    w = 0.0
    prev_v = 0.0
    prev_diff = 0.0
    first = True
    while i < n1 or j < n2:
        if j >= n2 or (i < n1 and cur[i] <= ref[j]):
            v = cur[i]
        else:
            v = ref[j]
        while i < n1 and cur[i] == v:
            i += 1
        while j < n2 and ref[j] == v:
            j += 1
        diff = abs(i / n1 - j / n2)
        if diff > d:
            d = diff
        if not first:
            w += prev_diff * (v - prev_v)
        first = False
        prev_v = v
        prev_diff = diff
    return d, w


@njit(cache=True)
def _js_psi(counts: np.ndarray, n: int, ref_props: np.ndarray, eps: float) -> tuple[float, float]:
    """(PSI with floored proportions, base-2 Jensen-Shannon distance) of bin counts against reference proportions."""
    psi = 0.0
    js = 0.0
    for b in range(counts.shape[0]):
        p = counts[b] / n
        q = ref_props[b]
        pe = max(p, eps)
        qe = max(q, eps)
        psi += (pe - qe) * math.log(pe / qe)
        m = (p + q) / 2.0
        left = p * math.log(p / m) if p > 0.0 else 0.0
        right = q * math.log(q / m) if q > 0.0 else 0.0
        js += left + right
    js = js / _LN2
    return psi, math.sqrt(max(js / 2.0, 0.0))


@njit(cache=True)
def _cell(i: int, n_feat: int, bounds: np.ndarray) -> tuple[int, int, int, int]:
    """Cell i of a (windows x features) kernel: (window, feature, first row, rows), windows being rows bounds[w]:bounds[w + 1]."""
    w = i // n_feat
    lo = bounds[w]
    return w, i % n_feat, lo, bounds[w + 1] - lo


@njit(parallel=True, cache=True, nogil=True)
def _numeric_kernel(X, bounds, ref, ref_off, edges, edge_off, props, ref_std, eps, memo_keys, memo_vals, memo_counts):
    """Every numeric feature of every window: window w is rows bounds[w]:bounds[w + 1] of X; results are (windows, features).

    All the windows of a monitor pass go through one call: each call of a nogil kernel hands the
    GIL away and takes it back, and every such hand-off costs the serving event loop. Exact KS
    p-values come from the table `memo_*` (KsMemo) where it has them: the cells read it in
    parallel, and `_ks_resolve` computes and stores the rest after them.
    """
    n_feat = X.shape[1]
    n_win = len(bounds) - 1
    psi = np.full((n_win, n_feat), np.nan)
    ks = np.full((n_win, n_feat), np.nan)
    ksp = np.full((n_win, n_feat), np.nan)
    w1 = np.full((n_win, n_feat), np.nan)
    w1n = np.full((n_win, n_feat), np.nan)
    js = np.full((n_win, n_feat), np.nan)
    miss = np.full((n_win, n_feat), np.nan)
    count = np.zeros((n_win, n_feat), dtype=np.int64)
    has = np.zeros((n_win, n_feat), dtype=np.bool_)
    ksk = np.zeros((n_win, n_feat), dtype=np.int64)
    for i in prange(n_win * n_feat):
        w, f, lo, n_rows = _cell(i, n_feat, bounds)
        buf = np.empty(n_rows)
        k = 0
        for r in range(lo, lo + n_rows):
            v = X[r, f]
            if math.isfinite(v):
                buf[k] = v
                k += 1
        count[w, f] = k
        if n_rows > 0:
            miss[w, f] = (n_rows - k) / n_rows
        r0 = ref_off[f]
        r1 = ref_off[f + 1]
        if k == 0 or r1 == r0:
            continue
        cur = buf[:k]
        _sort_finite(cur)
        rs = ref[r0:r1]
        d, wd = _ks_w1(cur, rs)
        d, p, key = _ks_memo_pvalue(d, k, r1 - r0, memo_keys, memo_vals)
        ksk[w, f] = key
        e0 = edge_off[f]
        e1 = edge_off[f + 1]
        ne = e1 - e0
        counts = np.zeros(ne + 1, dtype=np.int64)
        pos = 0
        for b in range(ne):
            start = pos
            edge = edges[e0 + b]
            while pos < k and cur[pos] < edge:
                pos += 1
            counts[b] = pos - start
        counts[ne] = k - pos
        ps, jsd = _js_psi(counts, k, props[e0 + f:e1 + f + 1], eps)
        sd = ref_std[f]
        psi[w, f] = ps
        ks[w, f] = d
        ksp[w, f] = p
        w1[w, f] = wd
        if sd > 0.0:
            w1n[w, f] = wd / sd
        else:
            w1n[w, f] = 0.0 if wd == 0.0 else np.inf
        js[w, f] = jsd
        has[w, f] = True
    _ks_resolve(ksp, ksk, memo_keys, memo_vals, memo_counts)
    return psi, ks, ksp, w1, w1n, js, miss, count, has


@njit(parallel=True, cache=True, nogil=True)
def _categorical_kernel(C, bounds, ref_props, cat_off, floor):
    """Every categorical feature of every window (rows bounds[w]:bounds[w + 1] of C); results are (windows, features)."""
    n_feat = C.shape[1]
    n_win = len(bounds) - 1
    stat = np.full((n_win, n_feat), np.nan)
    pval = np.full((n_win, n_feat), np.nan)
    dof = np.zeros((n_win, n_feat), dtype=np.int64)
    js = np.full((n_win, n_feat), np.nan)
    miss = np.full((n_win, n_feat), np.nan)
    count = np.zeros((n_win, n_feat), dtype=np.int64)
    unseen = np.zeros((n_win, n_feat), dtype=np.int64)
    has = np.zeros((n_win, n_feat), dtype=np.bool_)
    for i in prange(n_win * n_feat):
        w, f, lo, n_rows = _cell(i, n_feat, bounds)
        c0 = cat_off[f]
        n_cat = cat_off[f + 1] - c0
        counts = np.zeros(n_cat + 1, dtype=np.int64)
        n_missing = 0
        for r in range(lo, lo + n_rows):
            code = C[r, f]
            if code < 0:
                n_missing += 1
            elif code >= n_cat:
                counts[n_cat] += 1
            else:
                counts[code] += 1
        n = n_rows - n_missing
        count[w, f] = n
        unseen[w, f] = counts[n_cat]
        if n_rows > 0:
            miss[w, f] = n_missing / n_rows
        if n == 0 or n_cat == 0:
            continue
        nb = n_cat + 1 if counts[n_cat] > 0 else n_cat
        q = np.zeros(nb)
        q[:n_cat] = ref_props[c0:c0 + n_cat]
        total = 0.0
        for b in range(nb):
            total += max(q[b], floor)
        s = 0.0
        for b in range(nb):
            e = n * (max(q[b], floor) / total)
            diff = counts[b] - e
            s += diff * diff / e
        ps, jsd = _js_psi(counts[:nb], n, q, floor)
        dof[w, f] = nb - 1
        stat[w, f] = s
        pval[w, f] = chi2_sf(s, nb - 1) if nb > 1 else 1.0
        js[w, f] = jsd
        has[w, f] = True
    return stat, pval, dof, js, miss, count, unseen, has


# ============================================================================================
# Python API
# ============================================================================================


@dataclass(frozen=True, slots=True)
class NumericDriftResult:
    """Per-feature drift statistics of numeric features (arrays in profile order; NaN where has_data is False)."""

    names: tuple[str, ...]
    n_rows: int
    psi: np.ndarray
    ks_stat: np.ndarray
    ks_pvalue: np.ndarray
    wasserstein: np.ndarray
    wasserstein_norm: np.ndarray
    js: np.ndarray
    missing_rate: np.ndarray
    ref_missing_rate: np.ndarray
    n: np.ndarray
    has_data: np.ndarray


@dataclass(frozen=True, slots=True)
class CategoricalDriftResult:
    """Per-feature drift statistics of categorical features (arrays in profile order; NaN where has_data is False)."""

    names: tuple[str, ...]
    n_rows: int
    chi2_stat: np.ndarray
    chi2_pvalue: np.ndarray
    chi2_dof: np.ndarray
    js: np.ndarray
    missing_rate: np.ndarray
    ref_missing_rate: np.ndarray
    n: np.ndarray
    n_unseen: np.ndarray
    has_data: np.ndarray


@dataclass(frozen=True, slots=True)
class DatasetVerdict:
    """Dataset-level drift: drifted when n_drifted / n_evaluated >= drift_share (never with nothing evaluated)."""

    drifted: bool
    share_drifted: float
    drift_share: float
    n_features: int
    n_evaluated: int
    n_drifted: int
    feature_drifted: np.ndarray


def _numeric_input(profile: ReferenceProfile, current: np.ndarray | Mapping[str, Any]) -> np.ndarray:
    if isinstance(current, Mapping):
        return profile.numeric_matrix(current)
    x = np.asarray(current)
    if x.ndim != 2 or x.shape[1] != len(profile.numeric):
        raise ValueError(f"current window must be rows x {len(profile.numeric)} numeric features, got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float64)
    return x if x.flags.writeable else x.copy()


def _categorical_input(profile: ReferenceProfile, current: np.ndarray | Mapping[str, Any]) -> np.ndarray:
    if isinstance(current, Mapping):
        return profile.categorical_codes(current)
    c = np.asarray(current)
    if c.ndim != 2 or c.shape[1] != len(profile.categorical):
        raise ValueError(
            f"current window must be rows x {len(profile.categorical)} categorical codes, got {c.shape}")
    if c.dtype.kind not in "iu":
        raise TypeError(f"categorical codes must be integers, got {c.dtype}")
    c = np.ascontiguousarray(c, dtype=np.int64)
    return c if c.flags.writeable else c.copy()


def _bounds(rows: int, bounds: Any) -> np.ndarray:
    """Window row offsets: [0, rows] (one window) when None; else ascending offsets from 0 to rows."""
    if bounds is None:
        return np.array([0, rows], dtype=np.int64)
    b = np.ascontiguousarray(bounds, dtype=np.int64)
    if b.ndim != 1 or len(b) < 2 or b[0] != 0 or b[-1] != rows or np.any(np.diff(b) < 0):
        raise ValueError(f"window bounds must ascend from 0 to {rows} rows, got {b.tolist()}")
    return b


def numeric_drift(profile: ReferenceProfile, current: np.ndarray | Mapping[str, Any]) -> NumericDriftResult:
    """Drift of every numeric feature of a window (rows x features matrix, or column mapping) against the profile."""
    return numeric_drift_windows(profile, current)[0]


KernelCall = Callable[..., Any]
"""How a jitted kernel is run: `call(kernel, *args)`. `direct` runs it on the calling thread; the
monitor passes its kernel thread (monitor.KernelThread), which runs it at a lower CPU priority."""


def direct(kernel: Callable[..., Any], *args: Any) -> Any:
    return kernel(*args)


class KsMemo:
    """The table of exact KS p-values the numeric kernel keeps (see "Exact p-values, memoised").

    Open addressing over `slots` int64 keys and float64 p-values (16 bytes a slot; the default
    table is 4 MiB), emptied whenever it would pass half full, so its size is fixed whatever the
    traffic. Only the kernel reads and writes it, under the kernels' lock.
    """

    def __init__(self, slots: int = KS_MEMO_SLOTS) -> None:
        if slots < 2 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two >= 2, got {slots}")
        self.keys = np.zeros(slots, dtype=np.int64)
        self.vals = np.zeros(slots, dtype=np.float64)
        self.counts = np.zeros(3, dtype=np.int64)  # entries, hits, computed (misses)

    def stats(self) -> dict[str, int]:
        entries, hits, computed = (int(c) for c in self.counts)
        return {"entries": entries, "hits": hits, "computed": computed}

    def clear(self) -> None:
        with _LOCK:
            self.keys[:] = 0
            self.counts[:] = 0


KS_MEMO = KsMemo()
"""The process's table, shared by every version (a key names its sizes)."""


def numeric_drift_windows(
    profile: ReferenceProfile, current: np.ndarray | Mapping[str, Any], bounds: Any = None, call: KernelCall = direct,
    memo: KsMemo | None = None,
) -> list[NumericDriftResult]:
    """numeric_drift of consecutive windows of `current` in one kernel call: window w is rows bounds[w]:bounds[w + 1].

    `memo`: the table of exact KS p-values to use (KS_MEMO when None)."""
    x = _numeric_input(profile, current)
    b = _bounds(x.shape[0], bounds)
    ref_off = np.asarray(profile.sample_offsets, dtype=np.int64)
    edge_off = np.asarray(profile.edge_offsets, dtype=np.int64)
    std = np.array([f.std for f in profile.numeric], dtype=np.float64)
    memo = KS_MEMO if memo is None else memo
    with _LOCK:
        psi, ks, ksp, w1, w1n, js, miss, n, has = call(
            _numeric_kernel, x, b, profile.samples_array(), ref_off, profile.edges_array(), edge_off,
            profile.proportions_array(), std, PSI_EPSILON, memo.keys, memo.vals, memo.counts)
    names = tuple(profile.numeric_names)
    ref_missing = np.array([f.missing_rate for f in profile.numeric], dtype=np.float64)
    return [
        NumericDriftResult(
            names=names, n_rows=int(b[w + 1] - b[w]), psi=psi[w], ks_stat=ks[w], ks_pvalue=ksp[w],
            wasserstein=w1[w], wasserstein_norm=w1n[w], js=js[w], missing_rate=miss[w],
            ref_missing_rate=ref_missing, n=n[w], has_data=has[w],
        )
        for w in range(len(b) - 1)
    ]


def categorical_drift(profile: ReferenceProfile, current: np.ndarray | Mapping[str, Any]) -> CategoricalDriftResult:
    """Drift of every categorical feature of a window (int64 codes matrix, or column mapping) against the profile."""
    return categorical_drift_windows(profile, current)[0]


def categorical_drift_windows(
    profile: ReferenceProfile, current: np.ndarray | Mapping[str, Any], bounds: Any = None, call: KernelCall = direct,
) -> list[CategoricalDriftResult]:
    """categorical_drift of consecutive windows of `current` in one kernel call (see numeric_drift_windows)."""
    c = _categorical_input(profile, current)
    b = _bounds(c.shape[0], bounds)
    freqs = [f.frequencies() for f in profile.categorical]
    props = np.concatenate(freqs) if freqs else np.zeros(0)
    off = np.zeros(len(freqs) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in freqs], out=off[1:])
    with _LOCK:
        stat, pval, dof, js, miss, n, unseen, has = call(_categorical_kernel, c, b, props, off, CHI2_FLOOR)
    names = tuple(profile.categorical_names)
    ref_missing = np.array([f.missing_rate for f in profile.categorical], dtype=np.float64)
    return [
        CategoricalDriftResult(
            names=names, n_rows=int(b[w + 1] - b[w]), chi2_stat=stat[w], chi2_pvalue=pval[w], chi2_dof=dof[w],
            js=js[w], missing_rate=miss[w], ref_missing_rate=ref_missing, n=n[w], n_unseen=unseen[w], has_data=has[w],
        )
        for w in range(len(b) - 1)
    ]


def benjamini_hochberg(pvalues: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy's false_discovery_control, method="bh"); NaN stays NaN, uncounted.

    A 1-D array is one family of tests; a 2-D array is a family per row (the features of one drift
    window each), adjusted with the same few numpy calls whatever the number of rows. The monitor
    adjusts all the windows of a pass in one call: argsort and arange let the GIL go, and done per
    window they made the serving event loop lose the GIL race for milliseconds (benchmarks/README.md).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim not in (1, 2):
        raise ValueError("pvalues must be 1-D (one family) or 2-D (one family per row)")
    rows = p.reshape(1, -1) if p.ndim == 1 else p
    valid = ~np.isnan(rows)
    if np.any((rows[valid] < 0) | (rows[valid] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    m = valid.sum(axis=1, keepdims=True)  # tests per family: NaN ones are not counted
    # each row's valid p-values in ascending order (stable), its NaNs after them
    order = np.argsort(np.where(valid, rows, np.inf), axis=1, kind="stable")
    rank = np.arange(1, rows.shape[1] + 1, dtype=np.float64)
    adj = np.take_along_axis(rows, order, axis=1) * (m / rank)
    adj[rank > m] = np.inf  # the NaN slots: they do not lower the running minimum from the top
    adj = np.minimum.accumulate(adj[:, ::-1], axis=1)[:, ::-1]
    out = np.empty_like(rows)
    np.put_along_axis(out, order, np.clip(adj, 0.0, 1.0), axis=1)
    out[~valid] = np.nan
    return out.reshape(p.shape)


def pvalue_drift(pvalues: Any, alpha: float = 0.05) -> np.ndarray:
    """Per-feature drift flags: BH-adjusted p-value <= alpha (False for NaN p-values, i.e. features without data)."""
    adj = benjamini_hochberg(pvalues)
    return ~np.isnan(adj) & (adj <= alpha)


def dataset_verdict(feature_drifted: Any, has_data: Any | None = None, drift_share: float = 0.5) -> DatasetVerdict:
    """Dataset drift when the share of drifted features among those with data is >= drift_share (in (0, 1])."""
    if not 0.0 < drift_share <= 1.0:
        raise ValueError("drift_share must be in (0, 1]")
    drifted = np.asarray(feature_drifted, dtype=bool)
    evaluated = np.ones(drifted.shape, dtype=bool) if has_data is None else np.asarray(has_data, dtype=bool)
    if drifted.shape != evaluated.shape or drifted.ndim != 1:
        raise ValueError("feature_drifted and has_data must be 1-D arrays of the same length")
    flags = drifted & evaluated
    n_eval = int(evaluated.sum())
    n_drift = int(flags.sum())
    share = n_drift / n_eval if n_eval else 0.0
    return DatasetVerdict(
        drifted=bool(n_eval > 0 and share >= drift_share), share_drifted=share, drift_share=drift_share,
        n_features=int(drifted.shape[0]), n_evaluated=n_eval, n_drifted=n_drift, feature_drifted=flags,
    )


def warm_up() -> float:
    """Compile (or load from cache) every kernel on tiny inputs with the production argument types; returns seconds.

    The streaming detectors are included: compiling them at the monitor's first tick held the GIL
    for seconds on a fresh install, in the middle of serving.
    """
    from shepherd.monitoring.detectors import ADWIN, DDM, PageHinkley
    from shepherd.monitoring.profile import build_profile

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    ref = {"x": rng.normal(size=64), "c": np.array(["a", "b"] * 32)}
    profile = build_profile(ref, n_bins=4)
    numeric_drift(profile, {"x": rng.normal(size=16)})
    categorical_drift(profile, {"c": np.array(["a", "z"] * 8)})
    stream = rng.random(16)
    for detector in (ADWIN(), DDM(), PageHinkley()):
        detector.update_many(stream)
        detector.update(0.5)
    return time.perf_counter() - t0
