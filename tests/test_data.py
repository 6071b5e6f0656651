"""moefusion.data: image reading, box formats, paired datasets, augmentation.

Small datasets are written with cv2 into tmp_path; the real sets in ../shared/data are used
through the ``shared_data`` fixture (skipped with a reason when absent).
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from moefusion.data import (
    Boxes,
    ConcatPairs,
    PairedDataset,
    collate_pairs,
    detect_layout,
    parse_voc,
    parse_yolo,
    read_classes_txt,
    read_image,
    read_image_size,
    read_voc,
    read_yolo,
    split_ids,
    train_transform,
    val_transform,
)
from moefusion.data.augment import (
    CenterCrop,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    VisibleJitter,
)
from moefusion.data.boxes import voc_class_names
from moefusion.data.preprocess import ir_to_unit
from moefusion.errors import UserError

# ----------------------------------------------------------------------------- helpers


def gray(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def bgr(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img), path
    return path


def make_pairs(root: Path, ir_dir="ir", vis_dir="vis", ids=("a", "b", "c"), ext=".png", h=48, w=64) -> Path:
    for k, i in enumerate(ids):
        write(root / ir_dir / f"{i}{ext}", gray(h, w, k))
        write(root / vis_dir / f"{i}{ext}", bgr(h, w, k))
    return root


def voc_xml(objects, width=64, height=48) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>\n"
        for n, b in objects
    )
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation>\n{size}\n{objs}</annotation>\n"


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- io


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    write_text(tmp_path / "garbage.png", "not an image")
    with pytest.raises(UserError, match="garbage.png"):
        read_image(tmp_path / "garbage.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(UserError, match="empty.jpg"):
        read_image_size(tmp_path / "empty.jpg")
    with pytest.raises(UserError, match="garbage.png"):
        read_image_size(tmp_path / "garbage.png")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_files_are_corrupt(tmp_path, ext):
    full = write(tmp_path / f"full{ext}", bgr(64, 80))
    data = full.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    assert read_image(full).shape == (64, 80, 3)
    with pytest.raises(UserError, match=f"cut{ext}"):
        read_image(cut)
    # The header is intact: a cheap size read cannot tell (the dataset's decode scan can).
    assert read_image_size(cut) == (80, 64)


def test_jpeg_with_trailing_bytes_is_not_truncated(tmp_path):
    p = write(tmp_path / "x.jpg", bgr())
    p.write_bytes(p.read_bytes() + b"camera trailer \xff\x00 data")
    assert read_image(p).shape == (48, 64, 3)


def test_palette_bmp_16bit_and_three_channel_ir(tmp_path):
    from PIL import Image

    idx = np.arange(256, dtype=np.uint8).reshape(16, 16)
    pal = Image.fromarray(idx, "P")
    pal.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # inverted gray palette
    pal.save(tmp_path / "gray_palette.bmp")
    img = read_image(tmp_path / "gray_palette.bmp")
    assert img.shape == (16, 16) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, 255 - idx)  # the palette is applied, not the indices
    assert read_image_size(tmp_path / "gray_palette.bmp") == (16, 16)

    colour = Image.fromarray(idx, "P")
    colour.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    colour.save(tmp_path / "colour_palette.bmp")
    img = read_image(tmp_path / "colour_palette.bmp")
    assert img.shape == (16, 16, 3) and tuple(img[0, 1]) == (254, 0, 1)  # BGR

    y16 = (np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) * 50)
    for ext in (".png", ".tif"):
        p = write(tmp_path / f"y16{ext}", y16)
        got = read_image(p)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, y16)
        assert read_image_size(p) == (40, 32)

    g = gray(32, 40)
    p = write(tmp_path / "ir3.jpg", cv2.merge([g, g, g]))
    ir3 = read_image(p)
    assert ir3.shape == (32, 40, 3)
    assert ir_to_unit(ir3).shape == (32, 40)


# ----------------------------------------------------------------------------- boxes


def test_parse_voc_and_stable_class_mapping(tmp_path):
    a = write_text(tmp_path / "a.xml", voc_xml([("person", (10, 5, 20, 30)), ("car", (0.5, 1.5, 40, 41))]))
    b = write_text(tmp_path / "b.xml", voc_xml([("bicycle", (1, 2, 3, 4))]))
    empty = write_text(tmp_path / "c.xml", voc_xml([]))
    names, xyxy = parse_voc(a)
    assert names == ["person", "car"]
    np.testing.assert_allclose(xyxy, [[10, 5, 20, 30], [0.5, 1.5, 40, 41]])
    assert xyxy.dtype == np.float32
    classes = voc_class_names([b, empty, a])
    assert classes == ["bicycle", "car", "person"]  # sorted over the dataset, whatever the file order
    boxes = read_voc(a, classes)
    assert isinstance(boxes, Boxes) and boxes.class_names == classes and len(boxes) == 2
    assert boxes.labels.dtype == np.int64 and boxes.labels.tolist() == [2, 1]
    assert read_voc(b, classes).labels.tolist() == [0]
    assert len(read_voc(empty, classes)) == 0 and read_voc(empty, classes).xyxy.shape == (0, 4)
    with pytest.raises(UserError, match="a.xml.*'car'"):
        read_voc(a, ["person"])


def test_voc_errors_name_file_and_place(tmp_path):
    bad = write_text(tmp_path / "bad.xml", "<annotation>\n<object><name>x</name>\n</annotation>\n")
    with pytest.raises(UserError, match=r"bad.xml:3"):
        parse_voc(bad)
    nobox = write_text(tmp_path / "nobox.xml", "<annotation><object><name>car</name></object></annotation>")
    with pytest.raises(UserError, match="nobox.xml.*object 1.*bndbox"):
        parse_voc(nobox)
    nan = write_text(tmp_path / "nan.xml", voc_xml([("car", (1, 2, "abc", 4))]))
    with pytest.raises(UserError, match="nan.xml.*xmax"):
        parse_voc(nan)


def test_parse_yolo_extra_spaces_empty_and_errors(tmp_path):
    p = write_text(tmp_path / "a.txt", "0  0.5  0.5  0.25  0.5  \n\n2 0.1 0.2 0.1 0.2\n")
    ids, cxcywh = parse_yolo(p)
    assert ids.tolist() == [0, 2] and cxcywh.shape == (2, 4)
    boxes = read_yolo(p, width=200, height=100, class_names=["person", "bicycle", "car"])
    np.testing.assert_allclose(boxes.xyxy[0], [75, 25, 125, 75], atol=1e-4)
    np.testing.assert_allclose(boxes.xyxy[1], [10, 10, 30, 30], atol=1e-4)
    assert boxes.labels.dtype == np.int64
    empty = write_text(tmp_path / "empty.txt", "")
    assert len(read_yolo(empty, 10, 10)) == 0
    bad_files = [("0 0.5 0.5 0.1\n", 1), ("0 0.5 0.5 0.1 0.1\nx 0.5 0.5 0.1 0.1\n", 2), ("1.5 0.5 0.5 0.1 0.1\n", 1)]
    for text, line in bad_files:
        bad = write_text(tmp_path / "bad.txt", text)
        with pytest.raises(UserError, match=rf"bad.txt:{line}"):
            parse_yolo(bad)
    with pytest.raises(UserError, match="a.txt.*class id 2"):
        read_yolo(p, 10, 10, class_names=["person"])


def test_classes_txt_both_styles(tmp_path):
    indexed = write_text(tmp_path / "c1.txt", "0 person\n1 bicycle\n2 car\n")
    assert read_classes_txt(indexed) == ["person", "bicycle", "car"]
    assert read_classes_txt(write_text(tmp_path / "c2.txt", "person\ntraffic light\n\n")) == ["person", "traffic light"]
    assert read_classes_txt(write_text(tmp_path / "c3.txt", "1 car\n0 person\n")) == ["person", "car"]


# ----------------------------------------------------------------------------- layouts


def test_generic_layout_with_yolo_labels(tmp_path):
    root = make_pairs(tmp_path / "set")
    write_text(root / "labels" / "classes.txt", "person\ncar\n")
    write_text(root / "labels" / "a.txt", "1 0.5 0.5 0.5 0.5\n")
    write_text(root / "labels" / "b.txt", "")  # annotated, no objects
    ds = PairedDataset(root)
    assert ds.layout == "generic" and len(ds) == 3 and ds.ids == ["a", "b", "c"]
    assert ds.class_names == ["person", "car"] and ds.boxes_shared
    a, b, c = ds[0], ds[1], ds[2]
    assert a["ir"].shape == (1, 48, 64) and a["ir"].dtype == torch.float32
    assert a["vis"].shape == (1, 48, 64) and 0 <= float(a["vis"].min()) and float(a["vis"].max()) <= 1
    torch.testing.assert_close(a["boxes_ir"], torch.tensor([[16.0, 12.0, 48.0, 36.0]]))
    assert torch.equal(a["boxes_vis"], a["boxes_ir"]) and torch.equal(a["boxes"], a["boxes_ir"])
    assert a["labels"].tolist() == [1] and a["labels"].dtype == torch.int64
    assert a["has_boxes"] and b["has_boxes"] and len(b["boxes"]) == 0
    assert not c["has_boxes"] and len(c["boxes"]) == 0
    assert ds.report() == "set: 3 pairs, 0 skipped; 1 pairs without label files"


def test_m3fd_layout_with_voc(tmp_path):
    root = make_pairs(tmp_path / "M3FD", "Ir", "Vis", ids=("00001", "00002"))
    write_text(root / "Annotation" / "00001.xml", voc_xml([("People", (1, 2, 11, 22)), ("Car", (30, 10, 60, 40))]))
    write_text(root / "Annotation" / "00002.xml", voc_xml([("Truck", (5, 5, 25, 25))]))
    assert detect_layout(root) == "m3fd"
    ds = PairedDataset(root)
    assert ds.class_names == ["Car", "People", "Truck"]
    item = ds[0]
    assert item["labels_ir"].tolist() == [1, 0] and item["labels_vis"].tolist() == [1, 0]
    assert ds[1]["labels"].tolist() == [2]


def test_llvip_layout_and_split(tmp_path):
    root = tmp_path / "LLVIP"
    make_pairs(root, "infrared/train", "visible/train", ids=("010001", "010002"))
    make_pairs(root, "infrared/test", "visible/test", ids=("190001",))
    write_text(root / "Annotations" / "010001.xml", voc_xml([("person", (2, 2, 12, 30))]))
    assert detect_layout(root) == "llvip"
    with pytest.raises(UserError, match="split="):
        PairedDataset(root)
    train = PairedDataset(root, split="train")
    assert train.name == "LLVIP/train" and train.ids == ["010001", "010002"]
    assert train[0]["labels"].tolist() == [0] and not train[1]["has_boxes"]
    assert PairedDataset(root, split="test").ids == ["190001"]


def test_msrs_layout_per_modality_boxes(tmp_path):
    root = make_pairs(tmp_path / "MSRS", "ir", "vi", ids=("00001D", "00002N"))
    write_text(root / "labels" / "classes.txt", "0 person\n1 bicycle\n2 car\n")
    write_text(root / "labels" / "infrared" / "00001D.txt", "0 0.25 0.5 0.25 0.5\n0 0.75 0.5 0.25 0.5\n")
    write_text(root / "labels" / "visible" / "00001D.txt", "2 0.25 0.5 0.25 0.5\n")
    write_text(root / "labels" / "infrared" / "00002N.txt", "0 0.5 0.5 0.5 0.5\n")
    write_text(root / "labels" / "fusion" / "00001D.txt", "1 0.5 0.5 0.1 0.1\n")  # ignored
    ds = PairedDataset(root)
    assert ds.layout == "msrs" and not ds.boxes_shared
    item = ds[0]
    assert len(item["boxes_ir"]) == 2 and item["labels_ir"].tolist() == [0, 0]
    assert len(item["boxes_vis"]) == 1 and item["labels_vis"].tolist() == [2]
    # Union: the VIS car shares its box with an IR person, but not its class: both kept.
    assert len(item["boxes"]) == 3 and sorted(item["labels"].tolist()) == [0, 0, 2]
    night = ds[1]
    assert night["has_boxes_ir"] and not night["has_boxes_vis"] and night["has_boxes"]
    assert len(night["boxes_vis"]) == 0 and len(night["boxes"]) == 1
    assert ds.num_boxes() == (3, 1)
    # Only IR labels: VIS has none (has_boxes_vis False), not the IR boxes.
    shutil.rmtree(root / "labels" / "visible")
    ir_only = PairedDataset(root)
    assert not ir_only.boxes_shared and ir_only.num_boxes() == (3, 0)
    assert ir_only[0]["has_boxes_ir"] and not ir_only[0]["has_boxes_vis"] and len(ir_only[0]["boxes"]) == 2


def test_sixteen_bit_ir_and_gray_vis(tmp_path):
    root = tmp_path / "y16"
    ramp = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 13 + 20000)
    write(root / "ir" / "f1.png", ramp)
    write(root / "vis" / "f1.jpg", gray())
    write_text(tmp_path / "elsewhere" / "f1.txt", "0 0.5 0.5 0.5 0.5\n")
    ds = PairedDataset(root, boxes=tmp_path / "elsewhere")
    item = ds[0]
    torch.testing.assert_close(item["ir"][0], torch.from_numpy(ir_to_unit(ramp)))  # AGC, not /255
    assert float(item["ir"].max()) == 1.0 and float(item["ir"].min()) == 0.0
    assert item["vis"].shape == (1, 48, 64) and len(item["boxes"]) == 1
    with pytest.raises(UserError, match="label folder not found"):
        PairedDataset(root, boxes=tmp_path / "nowhere")


def test_no_layout_and_empty_dataset_are_user_errors(tmp_path):
    (tmp_path / "nothing" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match=r"nothing.*ir/\+vis/.*infrared/\+visible/"):
        PairedDataset(tmp_path / "nothing")
    root = tmp_path / "empty"
    (root / "ir").mkdir(parents=True)
    (root / "vis").mkdir()
    with pytest.raises(UserError, match=r"empty: no usable IR/VIS pairs.*expected"):
        PairedDataset(root)
    with pytest.raises(UserError, match="unknown layout"):
        PairedDataset(root, layout="kaist")


# ----------------------------------------------------------------------------- problems


def broken_set(root: Path) -> Path:
    make_pairs(root, ids=("good1", "good2"))
    write(root / "ir" / "only_ir.png", gray())
    write(root / "vis" / "only_vis.jpg", bgr())
    write(root / "ir" / "small.png", gray(24, 32))
    write(root / "vis" / "small.png", bgr())
    write_text(root / "ir" / "corrupt.png", "this is not a PNG")
    write(root / "vis" / "corrupt.png", bgr())
    write_text(root / "ir" / "notes.txt", "not an image: ignored")
    return root


def test_problems_are_counted_and_reported(tmp_path, caplog):
    root = broken_set(tmp_path / "broken")
    with caplog.at_level("WARNING"):
        ds = PairedDataset(root)
    assert ds.ids == ["good1", "good2"]
    reasons = dict(ds.skipped)
    assert set(reasons) == {"only_ir", "only_vis", "small", "corrupt"}
    assert "only_ir.png" in reasons["only_ir"] and "no visible image" in reasons["only_ir"]
    assert "only_vis.jpg" in reasons["only_vis"]
    assert "size mismatch" in reasons["small"] and "32x24" in reasons["small"] and "64x48" in reasons["small"]
    assert str(root / "ir" / "corrupt.png") in reasons["corrupt"]
    report = ds.report()
    assert report.splitlines()[0] == "broken: 2 pairs, 4 skipped"
    assert "corrupt.png" in report and "only_ir.png" in report
    assert "4 skipped" in caplog.text  # and it was logged, not dropped silently
    with pytest.raises(UserError, match="broken: 4 unusable pair.*strict=False"):
        PairedDataset(root, strict=True)


def test_truncated_file_found_by_decode_scan_or_at_load(tmp_path):
    root = make_pairs(tmp_path / "t", ids=("a", "b"))
    vis = root / "vis" / "b.png"
    vis.write_bytes(vis.read_bytes()[:200])
    ds = PairedDataset(root, scan="decode")
    assert ds.ids == ["a"] and "b.png" in ds.skipped[0][1]
    lazy = PairedDataset(root, scan="header")  # header intact: found only when loaded
    assert lazy.ids == ["a", "b"]
    with pytest.raises(UserError, match="b.png"):
        lazy[1]


def test_ambiguous_ids_ids_filter_and_duplicate_formats(tmp_path):
    root = make_pairs(tmp_path / "s", ids=("a", "b", "c"))
    write(root / "ir" / "a.jpg", gray())
    ds = PairedDataset(root)
    assert ds.ids == ["b", "c"] and "a.jpg" in dict(ds.skipped)["a"]
    assert PairedDataset(root, ids=["c", "b"]).ids == ["b", "c"]
    with pytest.raises(UserError, match="requested id"):
        PairedDataset(root, ids=["zzz"])
    write_text(root / "labels" / "b.xml", voc_xml([]))
    write_text(root / "labels" / "c.txt", "")
    with pytest.raises(UserError, match="mixes VOC"):
        PairedDataset(root)
    assert PairedDataset(root, boxes=None).has_boxes is False


def test_degenerate_and_out_of_image_boxes(tmp_path):
    root = make_pairs(tmp_path / "d", ids=("a",))
    objects = [("car", (10, 10, 10, 20)), ("car", (50, 40, 90, 80)), ("car", (70, 10, 80, 20))]
    write_text(root / "labels" / "a.xml", voc_xml(objects))
    ds = PairedDataset(root)
    boxes = ds[0]["boxes"]
    torch.testing.assert_close(boxes, torch.tensor([[50.0, 40.0, 64.0, 48.0]]))  # clipped
    assert ds.dropped_boxes == 2 and "2 degenerate boxes dropped" in ds.report()


# ----------------------------------------------------------------------------- augmentation


def sample_with_rect(h=60, w=80, rect=(20, 10, 44, 34)):
    """IR == VIS == a dark image with one bright rectangle exactly where the box is."""
    img = np.full((h, w), 0.1, np.float32)
    x1, y1, x2, y2 = rect
    img[y1:y2, x1:x2] = 1.0
    box = np.asarray([rect], np.float32)
    return {
        "id": "r",
        "ir": img.copy(),
        "vis": img.copy(),
        "boxes_ir": box.copy(),
        "labels_ir": np.asarray([1], np.int64),
        "boxes_vis": box.copy(),
        "labels_vis": np.asarray([1], np.int64),
    }


@pytest.mark.parametrize("seed", range(6))
def test_geometry_keeps_pair_aligned_and_boxes_on_pixels(seed):
    t = train_transform((40, 48), scale_range=(0.7, 1.4), jitter=None, min_box_area_fraction=0.0)
    out = t(sample_with_rect(), generator=torch.Generator().manual_seed(seed))
    assert out["ir"].shape == (40, 48) and out["vis"].shape == (40, 48)
    np.testing.assert_array_equal(out["ir"], out["vis"])
    bright = out["ir"] > 0.55  # more than half-way: the rectangle (after interpolation)
    ys, xs = np.nonzero(bright)
    if len(out["boxes_ir"]) == 0:  # box dropped: at most a sliver (< 2 px + interpolation) is left
        assert len(xs) == 0 or min(xs.max() - xs.min(), ys.max() - ys.min()) + 1 <= 3
        return
    x1, y1, x2, y2 = out["boxes_ir"][0]
    # Every bright pixel lies in the box (1 px slack for interpolation at the edges) ...
    assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1 and ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
    # ... and the box is filled with bright pixels (it did not drift off the object).
    inner = out["ir"][int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
    assert inner.size == 0 or inner.min() > 0.55
    np.testing.assert_array_equal(out["boxes_ir"], out["boxes_vis"])


def test_flip_and_crop_box_math():
    s = sample_with_rect(rect=(10, 5, 30, 25))
    flipped = RandomHorizontalFlip(p=1.0)(s)
    np.testing.assert_allclose(flipped["boxes_ir"], [[50, 5, 70, 25]])
    assert flipped["ir"][10, 60] == 1.0 and flipped["ir"][10, 20] == np.float32(0.1)
    # Crop whose window keeps 5 of the box's 20 columns (25% of its area): kept at exactly 25%.
    out = CenterCrop((30, 40))(s)  # window x 20..60, y 15..45
    np.testing.assert_allclose(out["boxes_ir"], [[0, 0, 10, 10]])
    assert len(CenterCrop((30, 40), min_box_area_fraction=0.3)(s)["boxes_ir"]) == 0
    # A crop window cutting the box to a 1-px sliver removes it.
    sliver = sample_with_rect(rect=(0, 0, 21, 20))
    assert len(CenterCrop((60, 40))(sliver)["boxes_ir"]) == 0  # window x 20..60: 1 px left


def test_pad_when_smaller_and_reflect():
    s = sample_with_rect(h=20, w=30, rect=(2, 2, 10, 10))
    out = RandomCrop((32, 40))(s, torch.Generator().manual_seed(0))
    assert out["ir"].shape == (32, 40)
    assert out["ir"][25:, :].max() == 0.0 and out["ir"][:, 35:].max() == 0.0  # zero padding
    np.testing.assert_allclose(out["boxes_ir"], [[2, 2, 10, 10]])
    refl = RandomCrop((32, 40), pad_mode="reflect")(s, torch.Generator().manual_seed(0))
    assert refl["ir"][25:, :].min() > 0.0
    np.testing.assert_array_equal(refl["ir"], refl["vis"])


def test_scale_moves_boxes():
    s = sample_with_rect(h=40, w=60, rect=(10, 10, 20, 30))
    out = RandomScale((2.0, 2.0))(s)
    assert out["ir"].shape == (80, 120)
    np.testing.assert_allclose(out["boxes_ir"], [[20, 20, 40, 60]])


def test_jitter_changes_visible_only():
    s = sample_with_rect()
    out = VisibleJitter(0.3, 0.3)(s, torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(out["ir"], s["ir"])
    assert not np.array_equal(out["vis"], s["vis"])
    assert out["vis"].min() >= 0 and out["vis"].max() <= 1


def test_augmentation_is_deterministic():
    a = train_transform(32, seed=7)
    b = train_transform(32, seed=7)
    for _ in range(3):
        oa, ob = a(sample_with_rect()), b(sample_with_rect())
        np.testing.assert_array_equal(oa["vis"], ob["vis"])
        np.testing.assert_array_equal(oa["boxes_ir"], ob["boxes_ir"])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    t = train_transform(32)
    np.testing.assert_array_equal(t(sample_with_rect(), g1)["vis"], t(sample_with_rect(), g2)["vis"])
    # pickles for DataLoader workers (its generator is re-made there)
    assert isinstance(pickle.loads(pickle.dumps(a)), Compose)


def test_val_transform_has_no_randomness():
    s = sample_with_rect()
    assert val_transform()(s) is s
    o1, o2 = val_transform((32, 32))(s), val_transform((32, 32))(s)
    np.testing.assert_array_equal(o1["ir"], o2["ir"])
    assert o1["ir"].shape == (32, 32)


def test_invalid_transform_arguments_are_user_errors():
    bad = (
        lambda: RandomCrop((0, 5)),
        lambda: RandomCrop(8, pad_mode="wrap"),
        lambda: RandomScale((2, 1)),
        lambda: VisibleJitter(0.1, 1.5),
    )
    for make in bad:
        with pytest.raises(UserError):
            make()


# ----------------------------------------------------------------------------- dataset + loader


def test_dataset_alignment_through_transform_and_collate(tmp_path):
    root = tmp_path / "same"
    for k, i in enumerate(("a", "b", "c")):
        img = gray(50 + 10 * k, 70 + 5 * k, k)  # varying sizes
        cv2.rectangle(img, (10, 10), (29, 29), 255, -1)
        write(root / "ir" / f"{i}.png", img)
        write(root / "vis" / f"{i}.png", img)  # VIS == IR (gray): luminance == IR
        fx, fy = 20 / img.shape[1], 20 / img.shape[0]
        write_text(root / "labels" / f"{i}.txt", f"0 {fx} {fy} {fx} {fy}\n")
    ds = PairedDataset(root, transform=train_transform((40, 40), jitter=None, seed=1))
    items = [ds[i] for i in range(3)]
    for it in items:
        assert torch.equal(it["ir"], it["vis"])
    batch = collate_pairs(items)
    assert batch["ir"].shape == (3, 1, 40, 40) and batch["vis"].shape == (3, 1, 40, 40)
    assert isinstance(batch["boxes"], list) and len(batch["boxes"]) == 3
    assert batch["has_boxes"].dtype == torch.bool and batch["has_boxes"].all()
    assert batch["id"] == ["a", "b", "c"]
    plain = PairedDataset(root)
    with pytest.raises(UserError, match="batch_size=1"):
        collate_pairs([plain[0], plain[1]])


def test_dataloader_workers_draw_different_augmentations(tmp_path):
    root = tmp_path / "w"
    img = gray(64, 64)
    for i in range(4):
        write(root / "ir" / f"{i}.png", img)
        write(root / "vis" / f"{i}.png", img)
    ds = PairedDataset(root, transform=train_transform(32, scale_range=None, flip_p=0, jitter=None, seed=5))

    def run():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_pairs)
        return [b["ir"] for b in loader]

    first = run()
    assert not torch.equal(first[0], first[1])  # worker 0 and worker 1 did not repeat each other
    for x, y in zip(first, run()):
        assert torch.equal(x, y)  # reproducible after torch.manual_seed


def test_split_ids_is_deterministic():
    ids = [f"frame{i}" for i in range(20)]
    tr, va = split_ids(ids, 0.25, seed=3)
    assert len(va) == 5 and len(tr) == 15 and not set(tr) & set(va) and set(tr) | set(va) == set(ids)
    assert split_ids(list(reversed(ids)), 0.25, seed=3) == (tr, va)
    assert split_ids(ids, 0.25, seed=4) != (tr, va)
    assert split_ids(["a", "b"], 0.01, 0)[1] != []
    with pytest.raises(UserError):
        split_ids(ids, 1.0)


def test_subset_and_concat_merge_classes(tmp_path):
    a = make_pairs(tmp_path / "A", ids=("1", "2"))
    write_text(a / "labels" / "1.xml", voc_xml([("person", (1, 1, 10, 10))]))
    b = make_pairs(tmp_path / "B", ids=("1",))
    write_text(b / "Annotations" / "1.xml", voc_xml([("car", (1, 1, 10, 10)), ("person", (20, 20, 30, 30))]))
    c = broken_set(tmp_path / "C")
    da, db, dc = PairedDataset(a), PairedDataset(b), PairedDataset(c)
    both = ConcatPairs([da, db, dc])
    assert both.class_names == ["person", "car"] and len(both) == 5
    assert both[0]["labels"].tolist() == [0]
    assert both[2]["labels"].tolist() == [1, 0]  # B's car=0, person=1 remapped
    report = both.report()
    assert "A: 2 pairs, 0 skipped" in report and "B: 1 pairs, 0 skipped" in report
    assert "C: 2 pairs, 4 skipped" in report and "corrupt.png" in report
    assert report.splitlines()[-1] == "total: 5 pairs from 3 folders, 4 skipped"
    sub = da.subset(["2"], transform=val_transform(32))
    assert sub.ids == ["2"] and sub[0]["ir"].shape == (1, 32, 32) and len(da) == 2


# ----------------------------------------------------------------------------- real data


def test_real_msrs_det_per_modality_boxes(shared_data):
    ds = PairedDataset(shared_data("msrs_det"), scan="header")
    assert len(ds) == 25 and ds.skipped == [] and ds.report() == "msrs_det: 25 pairs, 0 skipped"
    assert not ds.boxes_shared and ds.class_names == ["person", "bicycle", "car"]
    assert ds.num_boxes() == (139, 70)  # per MANIFEST.md
    ir_labels = np.concatenate([ds.annotations(i)[0].labels for i in range(len(ds))])
    vis_labels = np.concatenate([ds.annotations(i)[1].labels for i in range(len(ds))])
    assert np.bincount(ir_labels, minlength=3).tolist() == [111, 8, 20]
    assert np.bincount(vis_labels, minlength=3).tolist() == [38, 4, 28]
    item = ds[ds.ids.index("01023N")]  # empty VIS label file: annotated, no objects
    assert item["has_boxes_vis"] and len(item["boxes_vis"]) == 0 and item["ir"].shape == (1, 480, 640)
    assert float(item["boxes_ir"][:, 2].max()) <= 640 and float(item["boxes_ir"][:, 3].max()) <= 480


def test_real_roadscene_varying_sizes(shared_data):
    ds = PairedDataset(shared_data("roadscene"), scan="header")
    assert len(ds) == 111 and ds.skipped == [] and not ds.has_boxes
    sizes = {ds.size_of(i) for i in range(len(ds))}
    assert len(sizes) == 110
    item = ds[0]
    w, h = ds.size_of(0)
    assert item["ir"].shape == (1, h, w) == item["vis"].shape and not item["has_boxes"]


@pytest.mark.parametrize("name,n", [("tno_seq_nato_camp", 32), ("tno_seq_tree", 19), ("tno_seq_duine", 23)])
def test_real_tno_palette_bmp_sequences(shared_data, name, n):
    root = shared_data(name)
    ds = PairedDataset(root, scan="header")
    assert len(ds) == n and ds.skipped == []
    assert ds.ids == sorted(ds.ids, key=int)  # frame order
    raw = read_image(ds.paths(0)[0])
    assert raw.ndim == 2 and raw.dtype == np.uint8  # gray palette BMP read as gray
    item = ds[0]
    assert item["ir"].shape == (1, 270, 360) and item["vis"].shape == (1, 270, 360)
    assert 0 < float(item["ir"].mean()) < 1


def test_real_llvip_three_channel_ir(shared_data):
    ds = PairedDataset(shared_data("llvip_samples"), scan="header")
    assert len(ds) == 44 and ds.skipped == []
    assert read_image(ds.paths(0)[0]).shape == (1024, 1280, 3)
    item = val_transform((256, 320))(ds.load_sample(0))
    assert item["ir"].shape == (256, 320)


# -- video clips as training pairs ------------------------------------------------------------

def _write_clip(path, frames):
    import cv2

    h, w = frames[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (w, h), isColor=True)
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()


def test_video_clips_sampled_to_an_image_cache(tmp_path):
    from moefusion.data.video import extract_frame_pairs

    root = tmp_path / "videos"
    (root / "ir").mkdir(parents=True)
    (root / "vis").mkdir()
    for name, n in (("a", 7), ("b", 3)):
        # frame k of the IR clip is a flat k*10 grey, of the VIS clip 200 - k*10: pairs are checkable
        _write_clip(root / "ir" / f"{name}.avi", [np.full((32, 48), 10 * k, np.uint8) for k in range(n)])
        _write_clip(root / "vis" / f"{name}.avi", [np.full((32, 48), 200 - 10 * k, np.uint8) for k in range(n)])
    cache = tmp_path / "cache"
    out = extract_frame_pairs(root, frame_step=3, exclude=["b"], cache_dir=cache)
    ds = PairedDataset(out)
    assert ds.ids == ["a_00000", "a_00003", "a_00006"]
    for i, k in enumerate((0, 3, 6)):
        item = ds[i]
        assert round(float(item["ir"].mean()) * 255) == 10 * k
        assert round(float(item["vis"].mean()) * 255) == 200 - 10 * k
    assert extract_frame_pairs(root, frame_step=3, exclude=["b"], cache_dir=cache) == out  # cached
    assert [p.name for p in cache.iterdir()] == [out.name]  # no temporary folder left behind
    with pytest.raises(UserError, match="excluded clip"):
        extract_frame_pairs(root, frame_step=3, exclude=["c"], cache_dir=cache)
    (root / "vis" / "b.avi").unlink()
    with pytest.raises(UserError, match="without a partner.*b"):
        extract_frame_pairs(root, frame_step=3, cache_dir=cache)


def test_real_m3svd_clips_sample_every_nth_frame(shared_data, tmp_path):
    from moefusion.data.video import extract_frame_pairs

    root = shared_data("m3svd_video")
    out = extract_frame_pairs(root, frame_step=100, exclude=["0113_1714", "0117_1605", "0117_1620", "0111_1716"],
                              cache_dir=tmp_path)
    ds = PairedDataset(out)
    assert ds.ids == [f"1230_1202_{n:05d}" for n in (0, 100, 200)]  # a 205-frame clip
    item = ds[1]
    assert item["ir"].shape == (1, 480, 640) and 0.05 < float(item["ir"].std()) and 0.05 < float(item["vis"].std())
