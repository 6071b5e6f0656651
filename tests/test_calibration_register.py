"""IR-to-VIS registration: estimation round trip on a known homography (points and a chessboard
both cameras see), file formats, the common field of view, the runtime warp, and the CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from moefusion.calibration import cli
from moefusion.calibration.register import estimate_homography, register_from_images
from moefusion.data.registration import Registration, common_fov, load_registration, save_registration
from moefusion.errors import UserError
from moefusion.runtime.registration import Registrar

IR_SIZE, VIS_SIZE = (160, 120), (320, 240)
# IR -> VIS: scale 1.8, a small rotation, shift, and a little perspective
_a = np.deg2rad(2.0)
H_TRUE = (np.array([[1, 0, 22.0], [0, 1, 15.0], [0, 0, 1]])
          @ np.array([[np.cos(_a), -np.sin(_a), 0], [np.sin(_a), np.cos(_a), 0], [0, 0, 1]])
          @ np.array([[1.8, 0.01, 0], [0.0, 1.75, 0], [1e-4, 5e-5, 1]]))


def project(H, pts):
    return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), H).reshape(-1, 2)


def grid_error(H_est, H_ref=H_TRUE, size=IR_SIZE):
    xs, ys = np.meshgrid(np.linspace(0, size[0] - 1, 9), np.linspace(0, size[1] - 1, 7))
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    return float(np.abs(project(H_est, pts) - project(H_ref, pts)).max())


def test_estimate_round_trip_with_noise_and_outliers():
    rng = np.random.default_rng(0)
    ir = rng.uniform((5, 5), (155, 115), size=(40, 2))
    vis = project(H_TRUE, ir) + rng.normal(0, 0.2, (40, 2))
    vis[:4] += 40  # four gross mismatches
    H, mask, rms = estimate_homography(ir, vis)
    assert not mask[:4].any() and mask[4:].all()
    assert rms < 0.5
    assert grid_error(H) < 0.6


def test_exactly_four_points_and_too_few():
    ir = np.array([[10, 10], [150, 12], [148, 110], [12, 108]], float)
    H, mask, rms = estimate_homography(ir, project(H_TRUE, ir))
    assert grid_error(H) < 1e-3 and rms < 1e-3
    with pytest.raises(UserError, match="at least 4"):
        estimate_homography(ir[:3], project(H_TRUE, ir[:3]))


@pytest.mark.parametrize("ext", [".yaml", ".json"])
def test_save_load_round_trip(tmp_path, ext):
    reg = Registration(H_TRUE, IR_SIZE, VIS_SIZE, rms_px=0.12, points=9, inliers=9)
    path = tmp_path / f"reg{ext}"
    save_registration(reg, str(path))
    back = load_registration(str(path))
    np.testing.assert_allclose(back.H, reg.H, rtol=1e-12)
    assert (back.ir_size, back.vis_size, back.crop, back.points) == (IR_SIZE, VIS_SIZE, reg.crop, 9)
    if ext == ".json":
        assert json.loads(path.read_text())["direction"] == "ir_to_vis"


def test_bad_registration_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_registration(str(tmp_path / "none.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text("hello: [1, 2\n")
    with pytest.raises(UserError, match="cannot parse"):
        load_registration(str(p))
    p.write_text("foo: 1\n")
    with pytest.raises(UserError, match="not a registration file"):
        load_registration(str(p))
    p.write_text("H: [[0,0,0],[0,0,0],[0,0,0]]\nir_size: [4, 4]\nvis_size: [4, 4]\n")
    with pytest.raises(UserError, match="singular"):
        load_registration(str(p))


def test_common_fov_is_fully_covered_and_even():
    x, y, w, h = common_fov(H_TRUE, IR_SIZE, VIS_SIZE)
    assert w % 2 == 0 and h % 2 == 0 and w > 200 and h > 150
    corners = np.array([[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]], float)
    back = project(np.linalg.inv(H_TRUE), corners)
    assert (back >= -0.5).all() and (back[:, 0] <= IR_SIZE[0] - 0.5).all() and (back[:, 1] <= IR_SIZE[1] - 0.5).all()


def _scene(size, seed=1):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((size[1], size[0])).astype(np.float32), (0, 0), 3)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def test_runtime_warp_aligns_ir_with_vis():
    vis = _scene(VIS_SIZE)
    ir = cv2.warpPerspective(vis, np.linalg.inv(H_TRUE), IR_SIZE, flags=cv2.INTER_LINEAR)  # the IR camera's view
    r = Registrar(Registration(H_TRUE, IR_SIZE, VIS_SIZE))
    ir_w, vis_c = r.apply(ir, vis)
    assert ir_w.shape == vis_c.shape == (r.crop[3], r.crop[2])
    err = np.abs(ir_w.astype(float) - vis_c.astype(float))[4:-4, 4:-4]
    assert err.mean() < 3.0  # equal up to resampling of a smooth scene
    # the same registration at other camera sizes (same field of view)
    ir2 = cv2.resize(ir, (IR_SIZE[0] * 2, IR_SIZE[1] * 2))
    ir_w2, vis_c2 = r.apply(ir2, vis)
    assert np.abs(ir_w2.astype(float) - vis_c2.astype(float))[4:-4, 4:-4].mean() < 4.0


def _chessboard(size, squares=(10, 7), sq=22, origin=(50, 40)):
    img = np.full((size[1], size[0]), 200, np.uint8)
    for j in range(squares[1]):
        for i in range(squares[0]):
            if (i + j) % 2 == 0:
                x, y = origin[0] + i * sq, origin[1] + j * sq
                img[y:y + sq, x:x + sq] = 40
    return img


def test_pattern_registration_with_inverted_thermal_target():
    vis = cv2.cvtColor(_chessboard(VIS_SIZE, sq=20, origin=(60, 45)), cv2.COLOR_GRAY2BGR)
    # a heated board: inverted polarity in the thermal image, lower resolution, blurred
    ir = cv2.warpPerspective(255 - vis[:, :, 0], np.linalg.inv(H_TRUE), IR_SIZE, flags=cv2.INTER_AREA)
    ir = cv2.GaussianBlur(ir, (3, 3), 0.8)
    reg, used = register_from_images([ir], [vis], "chessboard:9x6")
    assert used == 1 and reg.points == 54 and reg.method == "chessboard"
    assert grid_error(reg.H) < 1.5
    assert reg.rms_px < 1.0


def test_pattern_not_found_is_a_user_error():
    blank = np.zeros((120, 160), np.uint8)
    with pytest.raises(UserError, match="not found"):
        register_from_images([blank], [blank], "chessboard:9x6")
    with pytest.raises(UserError, match="COLSxROWS"):
        register_from_images([blank], [blank], "chessboard")


# -- CLI -------------------------------------------------------------------------------------

def test_cli_points(tmp_path, capsys):
    ir = [(10, 10), (150, 12), (148, 110), (12, 108), (80, 60)]
    vis = project(H_TRUE, ir)
    pts = [f"{x},{y}:{u:.4f},{v:.4f}" for (x, y), (u, v) in zip(ir, vis)]
    out = tmp_path / "reg.yaml"
    rc = cli.main(["register", "--points", *pts, "--ir-size", "160x120", "--vis-size", "320x240", "-o", str(out)])
    assert rc == 0
    assert grid_error(load_registration(str(out)).H) < 0.01
    assert "wrote" in capsys.readouterr().out


def test_cli_points_file_and_pattern_with_preview(tmp_path):
    rng = np.random.default_rng(3)
    ir = rng.uniform((5, 5), (155, 115), size=(12, 2))
    vis = project(H_TRUE, ir)
    f = tmp_path / "pairs.csv"
    f.write_text("ir_x,ir_y,vis_x,vis_y\n" + "\n".join(f"{a},{b},{c},{d}  # pt" for (a, b), (c, d) in zip(ir, vis)))
    out = tmp_path / "reg.json"
    assert cli.main(["register", "--points-file", str(f), "--ir-size", "160x120", "--vis-size", "320x240",
                     "-o", str(out)]) == 0
    assert grid_error(load_registration(str(out)).H) < 0.01
    vis_img = _chessboard(VIS_SIZE, sq=20, origin=(60, 45))
    ir_img = cv2.warpPerspective(255 - vis_img, np.linalg.inv(H_TRUE), IR_SIZE, flags=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "ir.png"), ir_img)
    cv2.imwrite(str(tmp_path / "vis.png"), vis_img)
    out2, prev = tmp_path / "pat.yaml", tmp_path / "check.png"
    assert cli.main(["register", "--ir", str(tmp_path / "ir.png"), "--vis", str(tmp_path / "vis.png"),
                     "--pattern", "chessboard:9x6", "-o", str(out2), "--preview", str(prev)]) == 0
    assert grid_error(load_registration(str(out2)).H) < 1.5
    assert cv2.imread(str(prev)).shape == (240, 320, 3)


@pytest.mark.parametrize("argv,needle", [
    (["register", "-o", "r.yaml"], "give point pairs"),
    (["register", "--points", "1,2:3,4", "2,3:4,5", "5,5:6,6", "--ir-size", "8x8", "--vis-size", "8x8", "-o", "r.yaml"],
     "at least 4"),
    (["register", "--points", "1,2;3,4", "-o", "r.yaml"], "expected IRX,IRY:VISX,VISY"),
    (["register", "--points", "1,2:3,4", "-o", "r.txt"], ".yaml, .yml or .json"),
    (["register", "--points-file", "/no/such.csv", "-o", "r.yaml"], "no such file"),
    (["register", "--points", "0,0:0,0", "1,0:1,0", "0,1:0,1", "1,1:1,1", "-o", "r.yaml"], "--ir-size"),
    (["register", "--points", "0,0:0,0", "9,0:9,0", "0,9:0,9", "9,9:9,9", "--ir-size", "10x10", "--vis-size", "10x10",
      "-o", "r.yaml", "--preview", "check.png"], "--preview needs the --ir and --vis images"),
    (["register", "--ir", "ir.png", "--vis", "vis.png", "--pattern", "chessboard:9x6", "-o", "r.yaml",
      "--preview", "check.nope"], "--preview check.nope: cannot write that image type"),
])
def test_cli_user_errors(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert not (tmp_path / "r.yaml").exists()  # nothing written: the mistake is found first


def test_cli_has_subcommands():
    p = cli.build_parser()
    assert "register" in cli.SUBCOMMANDS
    with pytest.raises(SystemExit):
        p.parse_args([])


def test_cli_pattern_grabbed_from_video_streams(tmp_path):
    """--ir/--vis as source URIs: a frame is grabbed from each (here: video files via the runtime capture)."""
    vis_img = _chessboard(VIS_SIZE, sq=20, origin=(60, 45))
    ir_img = cv2.warpPerspective(255 - vis_img, np.linalg.inv(H_TRUE), IR_SIZE, flags=cv2.INTER_AREA)
    for name, img, size in (("ir.avi", ir_img, IR_SIZE), ("vis.avi", vis_img, VIS_SIZE)):
        w = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*"MJPG"), 10, size, isColor=False)
        for _ in range(12):
            w.write(img)
        w.release()
    out = tmp_path / "grab.yaml"
    assert cli.main(["register", "--ir", f"file://{tmp_path / 'ir.avi'}", "--vis", str(tmp_path / "vis.avi"),
                     "--pattern", "chessboard:9x6", "-o", str(out)]) == 0
    assert grid_error(load_registration(str(out)).H) < 2.0
