"""Fusion metrics and baselines: hand-computed values, invariants, both conventions, real pairs."""
from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

from moefusion.errors import UserError
from moefusion.eval import baselines as B
from moefusion.eval import metrics as M

ALL = list(M.METRICS)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _smooth_image(h=64, w=80, seed=0):
    """A textured 0..255 test image: smoothed noise plus a ramp (integer valued)."""
    x = _rng(seed).random((h, w)) * 255.0
    x = cv2.GaussianBlur(x, (0, 0), 2.0)
    x = 0.6 * (x - x.min()) / (x.max() - x.min()) * 255.0 + np.linspace(0, 100, w)[None, :]
    return np.rint(np.clip(x, 0, 255))


# --------------------------------------------------------------------------------------------
# single-image metrics, hand computed
# --------------------------------------------------------------------------------------------
def test_en_two_level_image_is_one_bit_and_constant_is_zero():
    img = np.zeros((8, 8))
    img[:, 4:] = 255
    assert M.en(img) == pytest.approx(1.0, abs=1e-12)
    assert M.en(np.full((5, 7), 42.0)) == 0.0
    four = np.repeat(np.array([[0, 60, 120, 250]], float), 3, axis=0)  # four equally likely levels
    assert M.en(four) == pytest.approx(2.0, abs=1e-12)


def test_en_bins_are_rounded_grey_levels():
    img = np.array([[10.4, 9.6], [10.2, 9.8]])  # all round to 10
    assert M.en(img) == 0.0


def test_sd():
    assert M.sd(np.full((6, 6), 200.0)) == 0.0
    img = np.zeros((4, 4))
    img[:, 2:] = 255
    assert M.sd(img) == pytest.approx(127.5)  # population std (ddof 0)


def test_sf_means_over_differences():
    img = np.array([[0.0, 10.0], [0.0, 10.0]])
    # row differences (10, 10) -> RF^2 = 100; column differences (0, 0) -> CF^2 = 0
    assert M.sf(img) == pytest.approx(10.0)
    assert M.sf(np.full((9, 9), 3.0)) == 0.0


def test_ag_of_a_ramp():
    img = np.tile(np.arange(0, 30, 3, dtype=float), (6, 1))  # Gx = 3 everywhere, Gy = 0
    assert M.ag(img) == pytest.approx(3.0 / math.sqrt(2.0))


def test_colour_input_is_compared_in_luminance():
    rng = _rng(1)
    bgr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    y = bgr[..., 0] * 0.114 + bgr[..., 1] * 0.587 + bgr[..., 2] * 0.299
    assert np.allclose(M.to_gray255(bgr), y)
    assert M.sd(bgr) == pytest.approx(M.sd(y))
    # uint16 is brought to 0..255
    assert np.allclose(M.to_gray255(np.full((3, 3), 65535, np.uint16)), 255.0)


# --------------------------------------------------------------------------------------------
# two-source metrics
# --------------------------------------------------------------------------------------------
def test_mi_symmetry_identity_and_conventions():
    a = _smooth_image(seed=1)
    b = _smooth_image(seed=2)
    f = np.rint(0.5 * (a + b))
    assert M.mutual_information(a, b) == pytest.approx(M.mutual_information(b, a), abs=1e-12)
    assert M.mutual_information(a, a) == pytest.approx(M.en(a), abs=1e-9)  # MI(X, X) = H(X)
    assert M.mutual_information(a, np.full_like(a, 7.0)) == pytest.approx(0.0, abs=1e-12)
    assert M.mi(f, a, b) == pytest.approx(M.mi(f, b, a))
    # published = sum in nats = 2 ln 2 x (mean in bits)
    assert M.mi(f, a, b, convention="published") == pytest.approx(2.0 * math.log(2.0) * M.mi(f, a, b))


def test_mi_matches_a_direct_contingency_table():
    rng = _rng(3)
    x = rng.integers(0, 6, 500).astype(float)
    y = np.where(rng.random(500) < 0.7, x, rng.integers(0, 6, 500)).astype(float)
    joint = np.zeros((6, 6))
    for i, j in zip(x.astype(int), y.astype(int)):
        joint[i, j] += 1
    joint /= joint.sum()
    px, py = joint.sum(1), joint.sum(0)
    ref = sum(joint[i, j] * math.log(joint[i, j] / (px[i] * py[j])) for i in range(6) for j in range(6) if joint[i, j] > 0)
    assert M.mutual_information(x[None, :], y[None, :], base=math.e) == pytest.approx(ref, rel=1e-12)


def test_scd_and_cc():
    a = _smooth_image(seed=4)
    b = _smooth_image(seed=5)
    # F = A + B: F - B = A and F - A = B, so both correlations are 1
    assert M.scd(a + b, a, b) == pytest.approx(2.0)
    assert M.scd(a + b, a, b) == pytest.approx(M.scd(a + b, b, a))
    r_ab = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert M.cc(a, a, b) == pytest.approx((1.0 + r_ab) / 2.0)
    assert M.cc(2.0 * a + 3.0, a, b) == pytest.approx(M.cc(a, a, b))  # affine invariant
    assert M.cc(np.full_like(a, 5.0), a, b) == 0.0  # constant F: r counted as 0


def test_psnr_hand_computed_and_published_peak():
    zero = np.zeros((10, 10))
    f = np.full((10, 10), 25.5)  # MSE = 25.5^2 to both sources
    assert M.psnr(f, zero, zero) == pytest.approx(20.0)  # 10 log10(255^2 / 25.5^2)
    assert M.psnr(f, zero, zero, convention="published") == pytest.approx(0.0)  # peak = max(F)
    assert M.psnr(zero, zero, zero) == math.inf


def test_vif_identity_contrast_and_conventions():
    a = _smooth_image(seed=6)
    b = _smooth_image(seed=7)
    assert M.vif_index(a, a) == pytest.approx(1.0, abs=1e-9)
    stretched = 1.3 * (a - a.mean()) + a.mean()
    assert M.vif_index(a, stretched) > 1.0  # contrast enhancement: VIF above 1
    assert M.vif_index(a, np.full_like(a, a.mean())) == pytest.approx(0.0, abs=1e-12)
    assert M.vif(a, a, a) == pytest.approx(1.0, abs=1e-9)
    assert M.vif(a, a, a, convention="published") == pytest.approx(2.0, abs=1e-9)
    f = np.rint(0.5 * (a + b))
    assert M.vif(f, a, b, convention="published") == pytest.approx(2.0 * M.vif(f, a, b))
    with pytest.raises(UserError, match="VIF needs images at least 41"):
        M.vif_index(a[:30, :30], a[:30, :30])


def _vif_reference(ref, dist):
    """The multiscale pixel VIF written out with scipy.signal.convolve2d (an independent check)."""
    from scipy.signal import convolve2d

    num = den = 0.0
    eps, sn = 1e-10, 2.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        s = n / 5.0
        r = (n - 1) / 2
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        h = np.exp(-(xx * xx + yy * yy) / (2 * s * s))
        h[h < np.finfo(float).eps * h.max()] = 0
        win = h / h.sum()
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, win, mode="valid"), convolve2d(dist, win, mode="valid")
        s1 = np.maximum(convolve2d(ref * ref, win, mode="valid") - mu1 * mu1, 0)
        s2 = np.maximum(convolve2d(dist * dist, win, mode="valid") - mu2 * mu2, 0)
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps], sv[s1 < eps] = 0, s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps], sv[s2 < eps] = 0, 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += np.log10(1 + g * g * s1 / (sv + sn)).sum()
        den += np.log10(1 + s1 / sn).sum()
    return num / den


def test_vif_matches_an_independent_convolve2d_implementation():
    pytest.importorskip("scipy")
    a = _smooth_image(70, 90, seed=8)
    f = np.rint(0.7 * a + 0.3 * _smooth_image(70, 90, seed=9))
    assert M.vif_index(a, f) == pytest.approx(_vif_reference(a, f), rel=1e-9)


def test_qabf_maximum_for_f_equal_a_equal_b():
    a = _smooth_image(seed=10)
    expected = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert M.QABF_MAX == pytest.approx(expected)
    assert M.qabf(a, a, a) == pytest.approx(expected, abs=1e-6)
    assert M.qabf(a, a, a) == pytest.approx(0.975, abs=1e-3)
    noisy = a + _rng(11).normal(0, 8, a.shape)
    assert M.qabf(noisy, a, a) < M.qabf(a, a, a)
    b = _smooth_image(seed=12)
    assert M.qabf(np.rint((a + b) / 2), a, b) < M.QABF_MAX
    assert M.qabf(a, a, b) == pytest.approx(M.qabf(a, b, a))


def _qabf_published_reference(f, a, b):
    """The MMIF-CDDFuse Qabf written out with scipy.signal.convolve2d ('same', zero fill)."""
    from scipy.signal import convolve2d

    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def arr(x):
        sx, sy = convolve2d(x, h3, mode="same"), convolve2d(x, h1, mode="same")
        g = np.sqrt(sx * sx + sy * sy)
        ang = np.full_like(x, math.pi / 2)
        nz = sx != 0
        ang[nz] = np.arctan(sy[nz] / sx[nz])
        return g, ang

    def q(aa, ga, af, gf):
        gaf = np.zeros_like(aa)
        gt, eq, lt = ga > gf, ga == gf, ga < gf
        gaf[gt] = gf[gt] / ga[gt]
        gaf[eq] = gf[eq]
        gaf[lt] = ga[lt] / gf[lt]
        aaf = 1 - np.abs(aa - af) / (math.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (gaf - 0.5))) * 0.9879 / (1 + np.exp(-22 * (aaf - 0.8)))

    ga, aa = arr(a)
    gb, ab = arr(b)
    gf, af = arr(f)
    return np.sum(q(aa, ga, af, gf) * ga + q(ab, gb, af, gf) * gb) / np.sum(ga + gb)


def test_qabf_published_matches_the_reference_formulation():
    pytest.importorskip("scipy")
    a = _smooth_image(40, 50, seed=13)
    b = _smooth_image(40, 50, seed=14)
    f = np.rint(np.maximum(a, b))
    assert M.qabf(f, a, b, convention="published") == pytest.approx(_qabf_published_reference(f, a, b), rel=1e-9)
    # published F = A = B: the reference's "gA == gF -> gF" rule gives slightly above the maximum
    assert M.qabf(a, a, a, convention="published") >= M.QABF_MAX - 1e-6


def test_nabf_zero_without_artifacts_positive_with_them():
    a = _smooth_image(seed=15)
    b = _smooth_image(seed=16)
    assert M.nabf(a, a, a) == 0.0
    assert M.nabf(a, a, b) == 0.0  # F = A never has an edge stronger than A
    assert M.nabf(np.rint((a + b) / 2), a, b) == pytest.approx(0.0, abs=1e-4)  # averaging adds no edges
    noisy = a + _rng(17).normal(0, 20, a.shape)
    v = M.nabf(noisy, a, b)
    assert 0.0 < v <= 1.0


def test_ssim_identity_symmetry_and_conventions():
    a = _smooth_image(seed=18)
    b = _smooth_image(seed=19)
    f = np.rint(0.5 * (a + b))
    assert M.ssim(a, a, a) == pytest.approx(1.0)
    assert M.ssim(a, a, a, convention="published") == pytest.approx(2.0)
    assert M.ssim_index(f, a) == pytest.approx(M.ssim_index(a, f))
    assert M.ssim(f, a, b) == pytest.approx(M.ssim(f, b, a))
    assert M.ssim(f, a, b) < 1.0
    assert M.ssim(a, a, b) == pytest.approx((1.0 + M.ssim_index(a, b)) / 2.0)


def test_ssim_published_matches_scikit_image_019_formulation():
    """scikit-image 0.19 structural_similarity(x, y) for float images: uniform 7x7 window
    (scipy.ndimage.uniform_filter), sample covariance, data_range = 2, 3-pixel border cropped."""
    ndi = pytest.importorskip("scipy.ndimage")
    x = _smooth_image(30, 41, seed=20)
    y = np.rint(0.6 * x + 0.4 * _smooth_image(30, 41, seed=21))
    ux, uy = ndi.uniform_filter(x, 7), ndi.uniform_filter(y, 7)
    cov = 49 / 48
    vx = cov * (ndi.uniform_filter(x * x, 7) - ux * ux)
    vy = cov * (ndi.uniform_filter(y * y, 7) - uy * uy)
    vxy = cov * (ndi.uniform_filter(x * y, 7) - ux * uy)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    assert M.ssim_index(x, y, convention="published") == pytest.approx(s[3:-3, 3:-3].mean(), rel=1e-9)


def test_ssim_default_uses_wang_constants():
    """Two constant images: SSIM = luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)."""
    x, y = np.full((20, 20), 100.0), np.full((20, 20), 150.0)
    c1 = (0.01 * 255) ** 2
    assert M.ssim_index(x, y) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))


def test_ms_ssim():
    a = _smooth_image(64, 64, seed=22)
    b = _smooth_image(64, 64, seed=23)
    assert M.ms_ssim(a, a, a) == pytest.approx(1.0)
    assert M.ms_ssim(a, a, a, convention="published") == pytest.approx(1.0)
    v = M.ms_ssim(np.rint((a + b) / 2), a, b)
    assert 0.0 < v < 1.0
    assert M.ms_ssim_index(a, b) == pytest.approx(M.ms_ssim_index(b, a))


# --------------------------------------------------------------------------------------------
# registry and compute()
# --------------------------------------------------------------------------------------------
def test_registry_lists_every_metric_with_direction_and_description():
    assert ALL == ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "Nabf", "SSIM", "MS-SSIM", "PSNR", "CC"]
    for name, info in M.METRICS.items():
        assert callable(info.fn) and info.description
        assert info.higher_is_better is (name != "Nabf")


def test_compute_validates_names_and_shapes():
    a = _smooth_image(seed=24)
    with pytest.raises(UserError, match=r"unknown metric 'FOO'; valid metrics: EN, SD.*CC"):
        M.compute(["EN", "FOO"], a, a, a)
    out = M.compute("en, qabf,ms_ssim", a, a, a)
    assert list(out) == ["EN", "Qabf", "MS-SSIM"]
    with pytest.raises(UserError, match="same size"):
        M.compute(["CC"], a, a, a[:-1])
    with pytest.raises(UserError, match="unknown metric convention"):
        M.compute(["EN"], a, a, a, convention="matlab")


def test_compute_every_metric_both_conventions():
    a = _smooth_image(64, 72, seed=25)
    b = _smooth_image(64, 72, seed=26)
    f = 0.5 * (a + b) + 0.3  # non-integer: published rounds it like an 8-bit file
    d = M.compute(ALL, f, a, b)
    p = M.compute(ALL, f, a, b, convention="published")
    assert list(d) == ALL and all(math.isfinite(v) for v in d.values())
    rf = np.rint(f)
    assert p["MI"] == pytest.approx(M.mi(rf, a, b, convention="published"))
    assert p["SSIM"] == pytest.approx(M.ssim(rf, a, b, convention="published"))
    for same in ("EN", "SD", "SCD", "CC", "Nabf", "MS-SSIM"):  # identical formulas, rounded input
        assert p[same] == pytest.approx(M.compute([same], rf, a, b)[same])


def test_compute_training_call_is_fast():
    """The model's validation step calls this at full frame size every time."""
    rng = _rng(27)
    ir = rng.random((480, 640)) * 255
    vis = cv2.GaussianBlur(rng.random((480, 640)), (0, 0), 3) * 255
    fused = 0.5 * (ir + vis)
    M.compute(["EN", "SD", "SF", "AG", "Qabf"], fused, ir, vis)  # warm up
    t = time.perf_counter()
    for _ in range(3):
        M.compute(["EN", "SD", "SF", "AG", "Qabf"], fused, ir, vis)
    per_call = (time.perf_counter() - t) / 3
    assert per_call < 0.25, f"compute(EN,SD,SF,AG,Qabf) on 640x480 took {per_call * 1000:.0f} ms"


def test_metrics_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, moefusion.eval.metrics, moefusion.eval.baselines; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(B.BASELINES))
def test_baselines_contract_and_identity(name):
    fn = B.BASELINES[name]
    rng = _rng(28)
    x = cv2.GaussianBlur(rng.random((37, 53)).astype(np.float32), (0, 0), 1.0)  # odd sizes
    out = fn(x, x)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.allclose(out, x, atol=1e-5)  # fusing an image with itself gives it back
    y = rng.random((37, 53)).astype(np.float32)
    out = fn(x, y)
    assert out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(UserError):
        fn(x, y[:-1])


def test_average_and_max_values():
    a = np.array([[0.2, 0.8]], np.float32).repeat(3, 0)
    b = np.array([[0.6, 0.4]], np.float32).repeat(3, 0)
    assert np.allclose(B.average(a, b), [[0.4, 0.6]] * 3)
    assert np.allclose(B.max(a, b), [[0.6, 0.8]] * 3)


def test_multiscale_baselines_keep_the_stronger_edge():
    flat = np.full((64, 64), 0.5, np.float32)
    edge = flat.copy()
    edge[:, 32:] = 0.9
    # the step keeps (nearly) its full height 0.4 across the edge (max-abs detail coefficients),
    # where averaging halves it; far from the edge the averaged base shows through
    for fn in (B.laplacian_pyramid_fusion, B.gff):
        out = fn(flat, edge)
        assert out[:, 32].mean() - out[:, 31].mean() > 0.28
    avg = B.average(flat, edge)
    assert avg[:, 32].mean() - avg[:, 31].mean() == pytest.approx(0.2, abs=1e-6)


# --------------------------------------------------------------------------------------------
# real pairs
# --------------------------------------------------------------------------------------------
def _real_pair(shared_data, name="msrs_det", index=0, scale=0.5):
    from moefusion.data.preprocess import prepare_pair

    root = shared_data(name)
    ir_path = sorted((root / "ir").iterdir())[index]
    vis_path = next(p for p in (root / "vis").iterdir() if p.stem == ir_path.stem)
    ir, parts = prepare_pair(cv2.imread(str(ir_path), cv2.IMREAD_UNCHANGED), cv2.imread(str(vis_path), cv2.IMREAD_UNCHANGED))
    h, w = ir.shape
    size = (int(w * scale), int(h * scale))
    ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
    vis = cv2.resize(parts.y, size, interpolation=cv2.INTER_AREA)
    return ir, vis


def test_real_pair_fused_equal_to_one_source_gives_the_extremes(shared_data):
    ir_u, vis_u = _real_pair(shared_data)
    a = np.rint(ir_u.astype(np.float64) * 255)
    b = np.rint(vis_u.astype(np.float64) * 255)
    d = M.compute(ALL, a, a, b)  # F = IR
    assert d["Nabf"] == 0.0  # nothing stronger than the IR edges
    assert d["EN"] == pytest.approx(M.en(a))
    assert d["MI"] == pytest.approx((M.en(a) + M.mutual_information(a, b)) / 2)  # MI(F, A) = H(A)
    assert d["SSIM"] == pytest.approx((1 + M.ssim_index(a, b)) / 2)
    assert d["MS-SSIM"] == pytest.approx((1 + M.ms_ssim_index(a, b)) / 2)
    assert d["VIF"] == pytest.approx((1 + M.vif_index(b, a)) / 2)
    assert d["CC"] == pytest.approx((1 + np.corrcoef(a.ravel(), b.ravel())[0, 1]) / 2)
    mse_ab = float(((a - b) ** 2).mean())
    assert d["PSNR"] == pytest.approx(10 * math.log10(255**2 / (mse_ab / 2)))
    qa_only = M.qabf(a, a, a)
    assert M.QABF_MAX - 1e-6 <= qa_only
    p = M.compute(["MI", "SSIM", "VIF"], a, a, b, convention="published")
    assert p["MI"] == pytest.approx(math.log(2) * (M.en(a) + M.mutual_information(a, b)))
    assert p["SSIM"] == pytest.approx(1 + M.ssim_index(a, b, convention="published"))
    assert p["VIF"] == pytest.approx(1 + M.vif_index(b, a))


def test_real_pair_multiscale_baselines_keep_more_edges_than_average(shared_data):
    ir_u, vis_u = _real_pair(shared_data, "roadscene", index=3, scale=1.0)
    a, b = ir_u * 255.0, vis_u * 255.0
    q = {name: M.qabf(np.rint(fn(ir_u, vis_u) * 255.0), a, b) for name, fn in B.BASELINES.items()}
    assert q["laplacian"] > q["average"]
    assert q["gff"] > q["average"]
    nabf_avg = M.nabf(np.rint(B.average(ir_u, vis_u) * 255.0), a, b)
    assert nabf_avg < 1e-3  # an average adds no edge stronger than both sources
