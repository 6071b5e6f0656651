"""samples/jetson: the scripts parse (bash -n) and pass shellcheck; what they detect on a Jetson
(the H.264 encoder, the MAXN power mode) is decided by samples/jetson/jetson_detect.sh, run here with
the device faked: a fake gst-inspect-1.0 / gst-launch-1.0 on PATH (the element registry and a test
encode), a fake /proc/device-tree/model and /dev, a fake nvpmodel, sudo and jetson_clocks.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JETSON = ROOT / "samples" / "jetson"
SCRIPTS = sorted(JETSON.glob("*.sh"))
DETECT = JETSON / "jetson_detect.sh"

ORIN_NANO = "NVIDIA Jetson Orin Nano Developer Kit\0"
ORIN_NX = "NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0"
AGX_ORIN = "Jetson AGX Orin Developer Kit\0"


def test_there_are_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"setup_jetpack6.sh", "build_engine.sh", "jetson_detect.sh", "moefusion-pipeline.sh",
            "run_csi_rgb_usb_thermal.sh", "run_usb_radiometric.sh", "calibrate_rig.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses(script):
    r = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_shellcheck():
    exe = shutil.which("shellcheck")
    if exe is None:
        why = "shellcheck is not installed (apt-get install shellcheck; scripts/install.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why + "; CI=true requires it")
        pytest.skip(why)
    # -x follows "source" lines; run from the repository root, where their paths are relative to
    r = subprocess.run([exe, "-x", *(str(p.relative_to(ROOT)) for p in SCRIPTS)], cwd=ROOT, check=False, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------- a faked device
def _fake_bin(folder: Path, name: str, body: str) -> None:
    p = folder / name
    p.write_text("#!/usr/bin/env bash\n" + body)
    p.chmod(0o755)


class FakeJetson:
    """A folder of fake commands and device files. ``elements``: what gst-inspect-1.0 knows;
    ``broken``: elements a test encode fails with; ``model``: /proc/device-tree/model; ``dev``: nodes in /dev."""

    def __init__(self, tmp: Path, *, model: str, elements=(), broken=(), dev=(), nvpmodel_conf: str = "",
                 mode: int = 0):
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "calls.log"
        (tmp / "dev").mkdir(exist_ok=True)
        for d in dev:
            (tmp / "dev" / d).touch()
        (tmp / "model").write_text(model)
        (tmp / "nvpmodel.conf").write_text(nvpmodel_conf)
        (tmp / "mode").write_text(str(mode))
        known = " ".join(elements)
        bad = " ".join(broken)
        _fake_bin(self.bin, "gst-inspect-1.0", f'for e in {known}; do [ "$1" = "$e" ] && exit 0; done\n'
                                               'echo "No such element or plugin \'$1\'" >&2; exit 1\n')
        # a pipeline runs when every word of it that names an encoder is a known element, none broken
        _fake_bin(self.bin, "gst-launch-1.0", f'echo "gst-launch-1.0 $*" >> "{self.log}"\n'
                                              f'for w in "$@"; do for b in {bad}; do [ "$w" = "$b" ] && exit 1; done\n'
                                              '  case "$w" in *enc) ok=0; for e in ' + known + '; do '
                                              '[ "$w" = "$e" ] && ok=1; done; [ $ok = 1 ] || exit 1;; esac; done\n'
                                              'exit 0\n')
        _fake_bin(self.bin, "sudo", 'exec "$@"\n')
        _fake_bin(self.bin, "nvpmodel", f'echo "nvpmodel $*" >> "{self.log}"\n'
                                        f'if [ "$1" = -q ]; then echo "NV Power Mode: X"; cat "{tmp}/mode"; echo; exit 0; fi\n'
                                        f'if [ "$1" = -m ]; then echo "$2" > "{tmp}/mode"; exit 0; fi\nexit 1\n')
        _fake_bin(self.bin, "jetson_clocks", f'echo "jetson_clocks $*" >> "{self.log}"\n'
                                             'if [ "$1" = --store ]; then echo stored > "$2"; fi\nexit 0\n')

    def env(self, **extra) -> dict:
        return {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "MOEFUSION_DT_MODEL": str(self.tmp / "model"),
                "MOEFUSION_DEV": str(self.tmp / "dev"), "MOEFUSION_NVPMODEL_CONF": str(self.tmp / "nvpmodel.conf"),
                **extra}

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def mode(self) -> str:
        return (self.tmp / "mode").read_text().strip()


def detect(fake: FakeJetson, func: str):
    r = subprocess.run(["bash", "-c", f'set -euo pipefail; . "{DETECT}"; {func}'], env=fake.env(),
                       check=False, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


JETPACK_ELEMENTS = ("nvv4l2h264enc", "nvvidconv", "nvv4l2decoder", "x264enc", "openh264enc")


def test_orin_nano_without_nvenc_gets_a_software_encoder(tmp_path):
    """JetPack installs nvv4l2h264enc on an Orin Nano too; it has no NVENC: x264enc it is."""
    fake = FakeJetson(tmp_path, model=ORIN_NANO, elements=JETPACK_ELEMENTS, dev=("nvhost-nvjpg",))
    rc, out, err = detect(fake, "pick_h264_encoder")
    assert (rc, out) == (0, "x264enc"), err
    assert "Orin Nano" in err and "no NVENC" in err
    assert not any("nvv4l2h264enc" in c for c in fake.calls()), "no encode tried on a Nano's missing NVENC"
    assert any("x264enc" in c for c in fake.calls()), "the software encoder is test-encoded"


def test_orin_nano_with_only_openh264(tmp_path):
    fake = FakeJetson(tmp_path, model=ORIN_NANO, elements=("nvv4l2h264enc", "openh264enc"))
    assert detect(fake, "pick_h264_encoder")[:2] == (0, "openh264enc")


def test_nvenc_module_gets_the_hardware_encoder(tmp_path):
    fake = FakeJetson(tmp_path, model=ORIN_NX, elements=JETPACK_ELEMENTS, dev=("nvhost-msenc",))
    rc, out, err = detect(fake, "pick_h264_encoder")
    assert (rc, out) == (0, "nvv4l2h264enc"), err
    assert any("nvv4l2h264enc" in c for c in fake.calls()), "a test encode, not just the element's presence"


def test_hardware_encoder_that_fails_to_encode_falls_back(tmp_path):
    fake = FakeJetson(tmp_path, model=AGX_ORIN, elements=JETPACK_ELEMENTS, broken=("nvv4l2h264enc",),
                      dev=("nvhost-msenc",))
    rc, out, err = detect(fake, "pick_h264_encoder")
    assert (rc, out) == (0, "x264enc") and "test encode failed" in err


def test_no_encoder_node_means_software(tmp_path):
    """An unknown module without NVENC's device node: not trusted to have it."""
    fake = FakeJetson(tmp_path, model="some carrier board\0", elements=JETPACK_ELEMENTS)
    assert detect(fake, "pick_h264_encoder")[:2] == (0, "x264enc")


def test_no_encoder_at_all_is_an_error_naming_the_package(tmp_path):
    fake = FakeJetson(tmp_path, model=ORIN_NANO, elements=("nvv4l2h264enc",))
    rc, out, err = detect(fake, "pick_h264_encoder")
    assert rc == 1 and out == "" and "gstreamer1.0-plugins-ugly" in err


AGX_CONF = """< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=MODE_15W >
< POWER_MODEL ID=2 NAME=MODE_30W >
< POWER_MODEL ID=3 NAME=MODE_50W >
< PM_CONFIG DEFAULT=2 >
"""
NANO_CONF = "< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=7W >\n< PM_CONFIG DEFAULT=0 >\n"
NANO_SUPER_CONF = ("< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=25W >\n"
                   "< POWER_MODEL ID=2 NAME=MAXN_SUPER >\n< POWER_MODEL ID=3 NAME=7W >\n")
NX_CONF = "< POWER_MODEL ID=0 NAME=10W >\n< POWER_MODEL ID=1 NAME=15W >\n< POWER_MODEL ID=3 NAME=MAXN >\n"


@pytest.mark.parametrize("conf, want", [(AGX_CONF, "0"), (NANO_CONF, "0"), (NANO_SUPER_CONF, "2"), (NX_CONF, "3")],
                         ids=["agx-orin", "orin-nano", "orin-nano-super", "maxn-not-0"])
def test_maxn_mode_id_from_nvpmodel_conf(tmp_path, conf, want):
    fake = FakeJetson(tmp_path, model=AGX_ORIN, nvpmodel_conf=conf)
    assert detect(fake, "maxn_mode_id")[:2] == (0, want)


def test_current_power_mode(tmp_path):
    fake = FakeJetson(tmp_path, model=AGX_ORIN, mode=2)
    assert detect(fake, "current_power_mode")[:2] == (0, "2")


# ---------------------------------------------------------------------------------------- the scripts
def _tree(tmp: Path) -> Path:
    """A copy of samples/jetson with a fake .venv: bin/python says TensorRT 10, the project's commands
    record their arguments (and fail with FAIL=1)."""
    repo = tmp / "repo"
    shutil.copytree(JETSON, repo / "samples" / "jetson")
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    _fake_bin(venv, "python", 'echo 10\n')
    for cmd in ("moefusion-export", "run_pipeline"):
        _fake_bin(venv, cmd, f'printf "%s\\n" "$@" > "{tmp}/{cmd}.args"\n[ "${{FAIL:-0}}" = 1 ] && exit 3\nexit 0\n')
    return repo


@pytest.mark.parametrize("fail", [False, True], ids=["build-ok", "build-fails"])
def test_build_engine_uses_maxn_and_restores_the_mode(tmp_path, fail):
    fake = FakeJetson(tmp_path / "dev", model=ORIN_NX, nvpmodel_conf=NX_CONF, mode=1)
    repo = _tree(tmp_path)
    r = subprocess.run(["bash", "samples/jetson/build_engine.sh", "w.pt", "480x640"], cwd=repo,
                       env=fake.env(FAIL="1" if fail else "0"), check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == (3 if fail else 0), r.stderr
    calls = fake.calls()
    assert "nvpmodel -m 3" in calls, calls  # MAXN's id on this module, not 0
    assert calls.index("nvpmodel -m 3") < calls.index("nvpmodel -m 1"), calls  # and back to the mode it found
    assert calls[-1].startswith("jetson_clocks --restore"), calls  # clocks as they were
    assert fake.mode() == "1"
    args = (tmp_path / "moefusion-export.args").read_text().split()
    assert args[args.index("--imgsz") + 1:args.index("--imgsz") + 3] == ["480", "640"] and "--half" in args


def test_build_engine_at_maxn_already_changes_no_mode(tmp_path):
    fake = FakeJetson(tmp_path / "dev", model=AGX_ORIN, nvpmodel_conf=AGX_CONF, mode=0)
    repo = _tree(tmp_path)
    r = subprocess.run(["bash", "samples/jetson/build_engine.sh"], cwd=repo, env=fake.env(), check=False, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not [c for c in fake.calls() if c.startswith("nvpmodel -m")] and fake.mode() == "0"


@pytest.mark.parametrize("script", ["run_usb_radiometric.sh", "run_csi_rgb_usb_thermal.sh"])
def test_run_scripts_pass_the_detected_encoder(tmp_path, script):
    fake = FakeJetson(tmp_path / "dev", model=ORIN_NANO, elements=JETPACK_ELEMENTS)
    repo = _tree(tmp_path)
    r = subprocess.run(["bash", f"samples/jetson/{script}"], cwd=repo, env=fake.env(), check=False, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "run_pipeline.args").read_text().splitlines()
    assert args[args.index("--encoder") + 1] == "x264enc"
    r = subprocess.run(["bash", f"samples/jetson/{script}"], cwd=repo, env=fake.env(ENCODER="openh264enc"),
                       check=False, capture_output=True, text=True, timeout=60)
    args = (tmp_path / "run_pipeline.args").read_text().splitlines()
    assert r.returncode == 0 and args[args.index("--encoder") + 1] == "openh264enc"


def test_service_launcher(tmp_path):
    """moefusion-pipeline.sh: the service's settings (moefusion-pipeline.env) as run_pipeline's flags."""
    fake = FakeJetson(tmp_path / "dev", model=ORIN_NX, elements=JETPACK_ELEMENTS, dev=("nvhost-msenc",))
    repo = _tree(tmp_path)
    settings = {}
    for line in (JETSON / "moefusion-pipeline.env").read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            settings[k] = v
    assert settings.get("ENCODER") == ""  # detected by default
    r = subprocess.run(["bash", "samples/jetson/moefusion-pipeline.sh"], cwd=repo, env=fake.env(**settings),
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "run_pipeline.args").read_text().splitlines()
    assert args[args.index("--encoder") + 1] == "nvv4l2h264enc"
    assert args[args.index("--ir") + 1] == settings["IR"] and "--ir-format" in args  # STREAM_FLAGS split
    assert args[args.index("--reconnect-timeout") + 1] == "-1"
    missing = {**settings, "MODEL": ""}
    r = subprocess.run(["bash", "samples/jetson/moefusion-pipeline.sh"], cwd=repo, env=fake.env(**missing),
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "MODEL is not set" in r.stderr
