"""What a Jetson has, for the launch strings: is this a Jetson, which module, does it have NVENC.

The facts are read from files (``read_facts``) and judged by pure properties (``JetsonFacts``), so
the choices built on them (the MJPEG decoder in ``gst.mjpeg_decoder``, the H.264 encoder in
``sinks.launch.pick_encoder``) are tested with faked facts. The logic mirrors
``samples/jetson/jetson_detect.sh``, with the same overrides: ``MOEFUSION_DT_MODEL`` (the
device-tree model file, default /proc/device-tree/model) and ``MOEFUSION_DEV`` (the device folder,
default /dev).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

DT_MODEL_FILE = "/proc/device-tree/model"
TEGRA_RELEASE_FILE = "/etc/nv_tegra_release"
# NVENC's device nodes (JetPack 5: nvhost-msenc; JetPack 6: v4l2-nvenc; older: nvhost-nvenc)
NVENC_NODES = ("nvhost-msenc", "v4l2-nvenc", "nvhost-nvenc")


@dataclass(frozen=True)
class JetsonFacts:
    model: str = ""                       # the device-tree model ('NVIDIA Jetson Orin Nano Developer Kit'), '' unread
    tegra_release: bool = False           # /etc/nv_tegra_release exists (L4T is installed)
    nvenc_nodes: tuple[str, ...] = ()     # the NVENC device nodes present

    @property
    def is_jetson(self) -> bool:
        return self.tegra_release or "NVIDIA Jetson" in self.model or "Orin" in self.model

    @property
    def is_orin_nano(self) -> bool:
        return "Orin Nano" in self.model

    @property
    def has_nvenc(self) -> bool:
        """A hardware H.264 encoder: AGX Orin and Orin NX have one (its device node exists); the
        Orin Nano has none, although JetPack installs nvv4l2h264enc (and may create the node) there."""
        return not self.is_orin_nano and bool(self.nvenc_nodes)

    @property
    def name(self) -> str:
        return self.model or ("this Jetson" if self.is_jetson else "this machine")


def read_facts(model_file: str | None = None, dev: str | None = None,
               tegra_release_file: str = TEGRA_RELEASE_FILE) -> JetsonFacts:
    """This machine's facts (a few reads and stats, nothing cached)."""
    model_file = model_file or os.environ.get("MOEFUSION_DT_MODEL") or DT_MODEL_FILE
    dev = dev or os.environ.get("MOEFUSION_DEV") or "/dev"
    try:
        with open(model_file, "rb") as f:
            model = f.read().replace(b"\0", b"").decode("utf-8", "replace").strip()
    except OSError:
        model = ""
    nodes = tuple(n for n in NVENC_NODES if os.path.exists(os.path.join(dev, n)))
    return JetsonFacts(model=model, tegra_release=os.path.exists(tegra_release_file), nvenc_nodes=nodes)
