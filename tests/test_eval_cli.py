"""moefusion-eval: paired folders, outputs, bad input, per-image failures, the model method."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from moefusion.errors import UserError
from moefusion.eval import baselines as B
from moefusion.eval import cli
from moefusion.eval import metrics as M


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _make_pairs(root: Path, ids=("a", "b", "c"), h=48, w=64, colour=True) -> Path:
    """Small synthetic pairs: IR gray PNG, VIS colour JPEG-free PNG (different extensions per side)."""
    rng = np.random.default_rng(0)
    for k, i in enumerate(ids):
        ir = cv2.GaussianBlur((rng.random((h, w)) * 255).astype(np.uint8), (5, 5), 0)
        vis = cv2.GaussianBlur((rng.random((h, w, 3) if colour else (h, w)) * 255).astype(np.uint8), (3, 3), 0)
        _write(root / "ir" / f"{i}.png", ir)
        _write(root / "vis" / f"{i}.bmp", vis)
    return root


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------------------------
# happy path
# --------------------------------------------------------------------------------------------
def test_all_baselines_all_metrics_with_every_output(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data")
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        ["--data", data, "--json", out / "r.json", "--csv", out / "r.csv", "--sheet", out / "s.png"], capsys
    )
    assert code == 0, stderr
    for name in cli.DEFAULT_BASELINES:
        assert name in stdout
    assert "Qabf+" in stdout and "Nabf-" in stdout

    doc = json.loads((out / "r.json").read_text())
    assert doc["convention"] == "default"
    assert doc["metrics"] == list(M.METRICS)
    assert doc["methods"] == list(cli.DEFAULT_BASELINES)
    assert doc["images"] == ["a", "b", "c"] and doc["failures"] == 0
    assert len(doc["per_image"]) == 3 * 4
    first = doc["per_image"][0]
    assert first["image"] == "a" and first["method"] == "average" and first["error"] is None
    assert set(first["values"]) == set(M.METRICS)
    for m in cli.DEFAULT_BASELINES:
        vals = [r["values"]["EN"] for r in doc["per_image"] if r["method"] == m]
        assert doc["mean"][m]["EN"] == pytest.approx(np.mean(vals))
        assert doc["mean"][m]["n_images"] == 3 and doc["mean"][m]["n_failed"] == 0

    rows = list(csv.DictReader((out / "r.csv").open()))
    assert [r["kind"] for r in rows] == ["image"] * 12 + ["mean"] * 4
    assert rows[0].keys() >= {"image", "method", "error", "EN", "MS-SSIM", "CC"}
    assert float(rows[-1]["Qabf"]) == pytest.approx(doc["mean"]["gff"]["Qabf"])

    sheet = cv2.imread(str(out / "s.png"))
    assert sheet is not None
    assert sheet.shape[0] == 3 * 160 + 2 * 4  # three image rows
    assert sheet.shape[1] == 6 * round(64 * 160 / 48) + 5 * 4  # IR, VIS, four methods
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary files


def test_metric_values_match_the_library_and_published_convention(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data", ids=("x",), colour=False)
    j = tmp_path / "r.json"
    code, _, err = _run(["--data", data, "--methods", "max", "--metrics", "mi,ssim,psnr", "--convention", "published", "--json", j], capsys)
    assert code == 0, err
    doc = json.loads(j.read_text())
    assert doc["convention"] == "published" and doc["metrics"] == ["MI", "SSIM", "PSNR"]
    ir = cv2.imread(str(data / "ir" / "x.png"), cv2.IMREAD_UNCHANGED).astype(np.float64)
    vis = cv2.imread(str(data / "vis" / "x.bmp"), cv2.IMREAD_UNCHANGED).astype(np.float64)
    fused = np.maximum(ir, vis)
    expect = M.compute(["MI", "SSIM", "PSNR"], fused, ir, vis, convention="published")
    got = doc["per_image"][0]["values"]
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k


def test_fused_dir_method_reads_results_from_disk(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data", colour=False)
    fused = tmp_path / "fused"
    for i in ("a", "b"):  # no file for "c": that image fails for this method only
        ir = cv2.imread(str(data / "ir" / f"{i}.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
        vis = cv2.imread(str(data / "vis" / f"{i}.bmp"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
        y = B.average(ir, vis).astype(np.float64) * 255  # rounded like the CLI rounds baselines
        _write(fused / f"{i}.png", np.rint(y).astype(np.uint8))
    j = tmp_path / "r.json"
    code, stdout, stderr = _run(["--data", data, "--methods", f"average,fused:{fused}", "--json", j], capsys)
    assert code == 1
    assert "no fused image for id 'c'" in stderr
    doc = json.loads(j.read_text())
    by = {(r["image"], r["method"]): r for r in doc["per_image"]}
    for i in ("a", "b"):
        assert by[(i, f"fused:{fused}")]["values"] == pytest.approx(by[(i, "average")]["values"])
    assert by[("c", f"fused:{fused}")]["error"].startswith("fusion failed: FileNotFoundError")
    _error(["--data", data, "--methods", f"fused:{tmp_path / 'nope'}"], capsys, "no such folder", "nope")


def test_limit_and_natural_order(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data", ids=("img10", "img2", "img1"))
    j = tmp_path / "r.json"
    code, _, err = _run(["--data", data, "--methods", "average", "--metrics", "EN", "--limit", "2", "--json", j], capsys)
    assert code == 0, err
    assert json.loads(j.read_text())["images"] == ["img1", "img2"]


def test_real_sequence(shared_data, tmp_path, capsys):
    """Real TNO frames (8-bit palette BMPs) and MSRS (gray IR + colour VIS PNG)."""
    for name in ("tno_seq_nato_camp", "msrs_det"):
        root = shared_data(name)
        j = tmp_path / f"{name}.json"
        code, stdout, err = _run(["--data", root, "--limit", "1", "--json", j, "--sheet", tmp_path / f"{name}.png"], capsys)
        assert code == 0, err
        doc = json.loads(j.read_text())
        assert doc["failures"] == 0
        mean = doc["mean"]
        for m in cli.DEFAULT_BASELINES:
            assert 0.0 < mean[m]["Qabf"] < M.QABF_MAX
            assert 0.0 <= mean[m]["Nabf"] < 0.2
            assert 0.0 < mean[m]["SSIM"] < 1.0
        assert mean["average"]["Nabf"] < 1e-3
        assert mean["gff"]["Qabf"] > mean["average"]["Qabf"]


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2, naming the culprit
# --------------------------------------------------------------------------------------------
def _error(argv, capsys, *expected):
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for e in expected:
        assert e in lines[0], lines[0]
    return lines[0]


def test_unpaired_image_is_refused(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data")
    _write(data / "ir" / "extra.png", np.zeros((48, 64), np.uint8))
    msg = _error(["--data", data], capsys, "unpaired image", str(data / "ir" / "extra.png"), "refuses")
    assert "add the missing file" in msg


def test_size_mismatch_is_refused(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data")
    _write(data / "vis" / "b.bmp", np.zeros((40, 64, 3), np.uint8))
    _error(["--data", data], capsys, "size mismatch", str(data / "vis" / "b.bmp"), "64x48", "64x40")


def test_unreadable_file_is_named(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data")
    (data / "ir" / "c.png").write_bytes(b"this is not a png")
    _error(["--data", data], capsys, "cannot decode image file", str(data / "ir" / "c.png"))


def test_missing_folders(tmp_path, capsys):
    _error(["--data", tmp_path / "nowhere"], capsys, "no such folder")
    (tmp_path / "d" / "ir").mkdir(parents=True)
    _error(["--data", tmp_path / "d"], capsys, "no vis/ folder")
    (tmp_path / "d" / "vis").mkdir()
    _error(["--data", tmp_path / "d"], capsys, "no images")


def test_duplicate_id_in_one_folder(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data")
    _write(data / "ir" / "a.jpg", np.zeros((48, 64), np.uint8))
    _error(["--data", data], capsys, "same id 'a'")


def test_unknown_metric_and_method_names(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data")
    _error(["--data", data, "--metrics", "EN,Qxyz"], capsys, "unknown metric 'Qxyz'", "valid metrics: EN", "MS-SSIM")
    _error(["--data", data, "--methods", "average,wavelet"], capsys, "unknown method 'wavelet'", "laplacian", "model:PATH")
    _error(["--data", data, "--methods", "average,average"], capsys, "listed twice")
    _error(["--data", data, "--methods", "model:" + str(tmp_path / "none.onnx")], capsys, "model file not found", "none.onnx")
    _error(["--data", data, "--methods", "average,model", "--model", tmp_path / "m.pt"], capsys, "model file not found", "m.pt")
    _error(["--data", data, "--methods", "average", "--model", tmp_path / "m.pt"], capsys, "does not list 'model'")
    _error(["--data", data, "--sheet", tmp_path / "sheet.jpg"], capsys, "PNG")
    _error(["--data", data, "--convention", "matlab"], capsys, "--convention 'matlab'", "default, published")


def test_command_line_error_has_no_traceback(tmp_path):
    data = _make_pairs(tmp_path / "data")
    r = subprocess.run(
        [sys.executable, "-m", "moefusion.eval", "--data", str(data), "--metrics", "nope"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: unknown metric 'nope'; valid metrics: " + ", ".join(M.METRICS)]
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------
# a method failing on one image
# --------------------------------------------------------------------------------------------
def test_method_failing_on_one_image_is_reported_and_others_continue(tmp_path, capsys, monkeypatch):
    data = _make_pairs(tmp_path / "data")
    _write(data / "ir" / "b.png", np.zeros((48, 64), np.uint8))  # a black IR frame

    def fragile(ir, vis_y):  # a method that cannot handle an all-black IR frame
        if ir.max() == 0:
            raise RuntimeError("empty IR frame")
        return B.average(ir, vis_y)

    monkeypatch.setitem(B.BASELINES, "fragile", fragile)
    j, c, s = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "s.png"
    code, stdout, stderr = _run(["--data", data, "--methods", "fragile,max", "--json", j, "--csv", c, "--sheet", s], capsys)
    assert code == 1  # something failed; everything was still written
    assert "1 of 6 (image, method) evaluations failed" in stderr
    assert "b / fragile: fusion failed: RuntimeError: empty IR frame" in stderr
    doc = json.loads(j.read_text())
    assert doc["failures"] == 1
    bad = [r for r in doc["per_image"] if r["error"]]
    assert [(r["image"], r["method"]) for r in bad] == [("b", "fragile")]
    assert all(v is None for v in bad[0]["values"].values())
    assert doc["mean"]["fragile"]["n_failed"] == 1 and doc["mean"]["max"]["n_failed"] == 0
    ok = [r["values"]["EN"] for r in doc["per_image"] if r["method"] == "fragile" and not r["error"]]
    assert len(ok) == 2 and doc["mean"]["fragile"]["EN"] == pytest.approx(np.mean(ok))
    assert "fragile" in stdout and "2/3" in stdout
    rows = list(csv.DictReader(c.open()))
    assert [r["error"] for r in rows if r["image"] == "b" and r["method"] == "fragile"] == ["fusion failed: RuntimeError: empty IR frame"]
    assert cv2.imread(str(s)) is not None


def test_metric_failing_on_one_image_keeps_the_other_metrics(tmp_path, capsys):
    data = _make_pairs(tmp_path / "data", ids=("big",))
    _make_pairs(data, ids=("tiny",), h=30, w=30)  # below VIF's 41-pixel minimum
    j = tmp_path / "r.json"
    code, _, stderr = _run(["--data", data, "--methods", "average", "--metrics", "EN,VIF", "--json", j], capsys)
    assert code == 1
    doc = json.loads(j.read_text())
    tiny = next(r for r in doc["per_image"] if r["image"] == "tiny")
    assert tiny["values"]["EN"] is not None and tiny["values"]["VIF"] is None
    assert "VIF" in tiny["error"] and "41" in tiny["error"]
    assert doc["mean"]["average"]["VIF"] == pytest.approx(doc["per_image"][0]["values"]["VIF"])


# --------------------------------------------------------------------------------------------
# the model method
# --------------------------------------------------------------------------------------------
def _default_model_or_skip():
    import moefusion

    try:
        return moefusion.load()
    except (ImportError, AttributeError, NotImplementedError) as e:
        pytest.skip(f"moefusion.load() is not available yet ({type(e).__name__}: {e})")
    except UserError as e:
        pytest.skip(f"the bundled default model is not available ({e})")


def test_model_method_on_real_pairs(shared_data, tmp_path, capsys):
    _default_model_or_skip()
    root = shared_data("tno_seq_nato_camp")
    j = tmp_path / "r.json"
    code, stdout, err = _run(["--data", root, "--limit", "1", "--methods", "average,model", "--json", j,
                              "--sheet", tmp_path / "s.png"], capsys)
    assert code == 0, err
    doc = json.loads(j.read_text())
    assert doc["methods"] == ["average", "model"] and doc["failures"] == 0
    assert 0.0 < doc["mean"]["model"]["Qabf"] < M.QABF_MAX


def test_model_load_failure_is_one_line(tmp_path, capsys, monkeypatch):
    """A loader/backend that is missing (ImportError and the like) is a one-line error, exit 2."""
    import moefusion

    def no_backend(path=None, **kw):
        raise ImportError("No module named 'tensorrt'")

    monkeypatch.setattr(moefusion, "load", no_backend)
    data = _make_pairs(tmp_path / "data")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0")
    _error(["--data", data, "--methods", f"average,model:{engine}"], capsys, "cannot load", "m.engine", "tensorrt")


@pytest.mark.slow
def test_model_path_method_with_an_untrained_checkpoint(tmp_path, capsys):
    """model:PATH through moefusion.load for real (an untrained 'edge' checkpoint; ~20 s on 2 cores)."""
    try:
        import moefusion
        from moefusion.model.checkpoint import save_checkpoint

        model = moefusion.build_model("edge")
    except (ImportError, AttributeError, NotImplementedError) as e:
        pytest.skip(f"building/saving a model is not available yet ({type(e).__name__}: {e})")
    ckpt = tmp_path / "edge.pt"
    save_checkpoint(ckpt, model)
    data = _make_pairs(tmp_path / "data", ids=("a",), h=96, w=128)
    j = tmp_path / "r.json"
    code, stdout, err = _run(["--data", data, "--methods", f"average,model:{ckpt}", "--metrics", "EN,Qabf,SSIM",
                              "--json", j, "--sheet", tmp_path / "s.png"], capsys)
    assert code == 0, err
    doc = json.loads(j.read_text())
    assert doc["methods"] == ["average", f"model:{ckpt}"] and doc["failures"] == 0
    assert all(v is not None for v in doc["per_image"][1]["values"].values())


# --------------------------------------------------------------------------------------------
# --heldout
# --------------------------------------------------------------------------------------------
def _tiny_config(tmp_path: Path) -> Path:
    """A training config over two small synthetic folders: one held out whole (data.val), half of
    the other held out by the seeded split."""
    _make_pairs(tmp_path / "train", ids=tuple(f"t{i}" for i in range(6)))
    _make_pairs(tmp_path / "val", ids=("v1", "v2", "v3"))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"data:\n  train: [{tmp_path / 'train'}]\n  val: [{tmp_path / 'val'}]\n  val_fraction: 0.5\n"
                   "train:\n  seed: 0\n")
    return cfg


def _markdown_tables(text: str) -> dict[str, dict[str, dict[str, float]]]:
    """'### set' headings and their tables -> set -> method -> metric -> value."""
    out, name, head = {}, None, None
    for line in text.splitlines():
        if line.startswith("### "):
            name, head = line[4:], None
            out[name] = {}
        elif name and line.startswith("| method |"):
            head = [c.strip() for c in line.strip("|").split("|")][1:]
        elif name and head and line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[name][cells[0]] = dict(zip(head, map(float, cells[1:])))
    return out


def test_heldout_evaluates_the_sets_the_config_held_out(tmp_path, capsys):
    cfg = _tiny_config(tmp_path)
    _make_pairs(tmp_path / "unseen", ids=("u1", "u2", "u3"))
    md, sheets = tmp_path / "out" / "heldout.md", tmp_path / "sheets"
    code, stdout, stderr = _run(["--heldout", "--config", cfg, "--methods", "average,laplacian", "--metrics", "EN,SF",
                                 "--unseen", tmp_path / "unseen", "--unseen-limit", "2", "--markdown", md,
                                 "--sheet-dir", sheets], capsys)
    assert code == 0, stderr
    text = md.read_text()
    assert text.strip() in stdout
    tables = _markdown_tables(text)
    assert list(tables) == ["val (whole sequence)", "train (3 of 6 held out)", "unseen (never seen, first 2 pairs)"]
    for methods in tables.values():
        assert list(methods) == ["average", "laplacian"]
        assert all(set(v) == {"EN", "SF"} for v in methods.values())
    # the numbers are moefusion-eval --data's on the same pairs
    j = tmp_path / "val.json"
    assert cli.main(["--data", str(tmp_path / "val"), "--methods", "average,laplacian", "--metrics", "EN,SF",
                     "--json", str(j)]) == 0
    mean = json.loads(j.read_text())["mean"]
    for method in ("average", "laplacian"):
        for metric in ("EN", "SF"):
            assert tables["val (whole sequence)"][method][metric] == pytest.approx(mean[method][metric], abs=6e-4)
    assert len(list(sheets.glob("heldout_*.png"))) == 3
    assert cv2.imread(str(next(sheets.glob("heldout_0_*.png")))) is not None


@pytest.mark.parametrize("argv, words", [
    (["--heldout", "--data", "x"], ["--data and --heldout", "give one of them"]),
    (["--heldout", "--routing-report"], ["--heldout and --routing-report"]),
    (["--data", "x", "--unseen", "y"], ["--unseen cannot be used with --data"]),
    (["--heldout", "--json", "r.json"], ["--json cannot be used with --heldout"]),
    (["--routing-report", "--methods", "average"], ["--methods cannot be used with --routing-report"]),
    (["--temporal", "--heldout"], ["--temporal and --heldout", "give one of them"]),
    (["--data", "x", "--temporal", "--sheet", "s.png"], ["--sheet cannot be used with --temporal"]),
    ([], ["--data ROOT, --heldout, --routing-report or --temporal"]),
])
def test_conflicting_modes_and_options_are_one_line_errors(argv, words, capsys):
    code, _, stderr = _run(argv, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for w in words:
        assert w in lines[0]
