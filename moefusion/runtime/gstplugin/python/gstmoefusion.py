"""The ``moefusion`` GStreamer element: IR + visible video fusion inside any GStreamer pipeline.

    gst-launch-1.0 moefusion name=f ! videoconvert ! x264enc ! mp4mux ! filesink location=fused.mp4 \\
        filesrc location=ir.mp4 ! decodebin ! f.ir   filesrc location=vis.mp4 ! decodebin ! f.vis

A GstAggregator with two sink pads, ``ir`` and ``vis``, and one ``src`` pad. Buffers are paired by
running time (``sync.Pairer``, as run_pipeline pairs frames: nearest within ``sync-tolerance``, each
used once) and every pair goes through run_pipeline's own processing (``moefusion.runtime.fusion``:
registration, preprocessing, the model in stream mode, the view); the work apart from GStreamer's
object model is ``moefusion/runtime/element.py``. docs/runtime.md, "The GStreamer element".

gst-python's plugin loader (Debian/Ubuntu: gstreamer1.0-python3-plugin-loader) loads this file from
the ``python/`` folder of a directory on ``GST_PLUGIN_PATH`` (or of
``~/.local/share/gstreamer-1.0/plugins``, where scripts/install.sh links it). The loader embeds the
system's Python, so this module first makes the project importable: the package that holds this
file, and the site-packages of ``$MOEFUSION_SITE_PACKAGES``, ``$VIRTUAL_ENV`` and the checkout's
``.venv`` for this Python version. Registering the element needs GStreamer only; the model (and torch)
is loaded when the element starts (READY -> PAUSED), and every problem there is an error message
on the bus naming the property or the missing piece, not a crash.
"""
from __future__ import annotations

import logging
import os
import site
import sys
import traceback


def _project_paths() -> list[str]:
    """Where moefusion and its dependencies are, for the Python that GStreamer embeds."""
    here = os.path.dirname(os.path.realpath(__file__))  # <root>/moefusion/runtime/gstplugin/python
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(here))))  # holds moefusion/
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    dirs = [d for d in os.environ.get("MOEFUSION_SITE_PACKAGES", "").split(os.pathsep) if d]
    if os.environ.get("VIRTUAL_ENV"):
        dirs.append(os.path.join(os.environ["VIRTUAL_ENV"], "lib", ver, "site-packages"))
    dirs += [os.path.join(root, ".venv", "lib", ver, "site-packages"), root]
    return dirs


def _add_project_paths() -> list[str]:
    """The folders of ``_project_paths`` that exist, with their .pth files (an editable install's
    finder), put first on sys.path: the virtualenv's numpy before any older one of the system."""
    added: list[str] = []
    for d in _project_paths():
        if os.path.isdir(d) and d not in added:
            before = set(sys.path)
            site.addsitedir(d)
            added += [p for p in sys.path if p not in before and p not in added]
            if d not in added and d in sys.path:
                added.append(d)
    sys.path[:] = added + [p for p in sys.path if p not in added]
    return added


_PATHS = _add_project_paths()

import gi  # noqa: E402 - after the paths (the loader has imported gi already)

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, GObject, Gst, GstBase, GstVideo  # noqa: E402

INPUT_FORMATS = "{ GRAY8, GRAY16_LE, I420, NV12, BGR, BGRx }"
OUTPUT_FORMATS = "{ I420, BGR }"
_RANGES = "width=(int)[ 1, 2147483647 ], height=(int)[ 1, 2147483647 ], framerate=(fraction)[ 0/1, 2147483647/1 ]"
SINK_CAPS = Gst.Caps.from_string(f"video/x-raw, format=(string){INPUT_FORMATS}, {_RANGES}")
SRC_CAPS = Gst.Caps.from_string(f"video/x-raw, format=(string){OUTPUT_FORMATS}, {_RANGES}")
ANY_RAW_CAPS = Gst.Caps.from_string(f"video/x-raw, {_RANGES}")
RW = GObject.ParamFlags.READWRITE

# property -> (type, nick, blurb, [min, max,] default); the values are checked when the element starts
PROPERTIES = {
    "model": (str, "Model", "Path of a checkpoint (.pt), an .onnx or an .engine; unset: the bundled weights", None),
    "backend": (str, "Backend", "auto | torch | onnxruntime (onnx) | tensorrt (trt) | average: as run_pipeline's "
                "--backend (auto: from the model file; the choice is logged)", "auto"),
    "device": (str, "Device", "auto | cpu | cuda (torch and onnxruntime backends)", "auto"),
    "registration": (str, "Registration", "IR-to-VIS registration file (YAML/JSON from moefusion-calibrate "
                     "register): IR is warped into VIS and both are cropped to the common field of view", None),
    "stream-mode": (bool, "Stream mode", "Carry the model's temporal state from frame to frame (steadier video); "
                    "false: every pair is fused alone. A backend without state runs per frame", True),
    "view": (str, "View", "fused | side-by-side (IR, VIS, fused) | grid (IR, VIS / fused, attention)", "fused"),
    "model-fit": (str, "Model fit", "letterbox | stretch: how frames reach a model of a fixed input size", "letterbox"),
    "sync-tolerance": (float, "Sync tolerance", "Pair an IR and a VIS buffer whose running times differ by at most "
                       "this many milliseconds (0 < MS <= 10000)", -1e12, 1e12, 25.0),
    "sync-offset": (float, "Sync offset", "Milliseconds added to the IR running times before pairing (a thermal "
                    "camera that delivers late: negative)", -1e12, 1e12, 0.0),
}


def _error(domain, code, text: str):
    return GLib.Error.new_literal(domain.quark(), text, code)


class _GstLog(logging.Handler):
    """moefusion's log records into GStreamer's debug log (GST_DEBUG=python:4 shows them)."""

    def emit(self, record):
        try:
            msg = "moefusion: " + self.format(record)
        except Exception:  # noqa: BLE001 - a bad record must not break the streaming thread
            return
        if record.levelno >= logging.WARNING:
            Gst.warning(msg)
        elif record.levelno >= logging.INFO:
            Gst.info(msg)
        else:
            Gst.debug(msg)


def _setup_logging() -> None:
    root = logging.getLogger("moefusion")
    if not any(isinstance(h, _GstLog) for h in root.handlers):
        root.addHandler(_GstLog())
        root.setLevel(logging.INFO)
        root.propagate = False


class MoEFusion(GstBase.Aggregator):
    __gstmetadata__ = (
        "MoE-Fusion IR + visible fusion",
        "Filter/Video",
        "Fuses a thermal (IR) and a visible (VIS) video stream with MoE-Fusion, frame pairs matched by running time",
        "MoE-Fusion Edge",
    )
    __gsttemplates__ = (
        Gst.PadTemplate.new_with_gtype("ir", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, SINK_CAPS,
                                       GstBase.AggregatorPad.__gtype__),
        Gst.PadTemplate.new_with_gtype("vis", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, SINK_CAPS,
                                       GstBase.AggregatorPad.__gtype__),
        Gst.PadTemplate.new_with_gtype("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, SRC_CAPS,
                                       GstBase.AggregatorPad.__gtype__),
    )
    __gproperties__ = {name: spec + (RW,) for name, spec in PROPERTIES.items()}

    def __init__(self):
        super().__init__()
        self.props_ = {name: spec[-1] for name, spec in PROPERTIES.items()}
        self._sinks = {}
        for role in ("ir", "vis"):
            pad = Gst.Pad.new_from_template(self.get_pad_template(role), role)
            self.add_pad(pad)
            self._sinks[role] = pad
        self.session = None
        self._reset_stream_state()

    def _reset_stream_state(self):
        self._formats = {}  # role -> element.InputFormat of the pad's current caps
        self._segments = {}  # role -> the pad's current (time) segment: buffers' running times
        self._live = None
        self._next_time = Gst.CLOCK_TIME_NONE
        self._caps_str = None
        self._planes = None
        self._pool = None
        self._allowed = None  # downstream's output formats, asked again after a reconfigure

    # -- properties ----------------------------------------------------------------------------
    def do_get_property(self, prop):
        return self.props_[prop.name]

    def do_set_property(self, prop, value):
        self.props_[prop.name] = value

    # -- messages ------------------------------------------------------------------------------
    def _post_error(self, domain, code, text: str, debug: str = "") -> None:
        if not text.startswith("moefusion"):
            text = f"moefusion: {text}"
        self.post_message(Gst.Message.new_error(self, _error(domain, code, text), debug))

    def _post_warning(self, text: str) -> None:
        self.post_message(Gst.Message.new_warning(self, _error(Gst.StreamError, Gst.StreamError.FAILED,
                                                              f"moefusion: {text}"), ""))

    # -- start / stop --------------------------------------------------------------------------
    def do_start(self):
        try:
            from moefusion.errors import UserError
            from moefusion.runtime import element
        except Exception as e:  # noqa: BLE001 - reported as an error message on the bus
            self._post_error(Gst.CoreError, Gst.CoreError.FAILED,
                             f"moefusion: the moefusion package cannot be imported by GStreamer's Python "
                             f"{sys.version.split()[0]} ({type(e).__name__}: {e}); it looked in {_project_paths()}. "
                             f"Make the virtualenv with this Python (python{sys.version_info[0]}."
                             f"{sys.version_info[1]}), activate it (VIRTUAL_ENV) or set MOEFUSION_SITE_PACKAGES to its "
                             "site-packages folder", traceback.format_exc())
            return False
        _setup_logging()
        p = self.props_
        settings = element.Settings(model=p["model"], backend=p["backend"], device=p["device"],
                                    registration=p["registration"], stream_mode=p["stream-mode"], view=p["view"],
                                    model_fit=p["model-fit"], sync_tolerance_ms=p["sync-tolerance"],
                                    sync_offset_ms=p["sync-offset"])
        self._element = element
        try:
            self.session = element.ElementFusion(settings, on_note=self._post_warning)
        except UserError as e:
            self._post_error(Gst.LibraryError, Gst.LibraryError.SETTINGS, str(e))
            return False
        except Exception as e:  # noqa: BLE001 - reported as an error message on the bus
            self._post_error(Gst.LibraryError, Gst.LibraryError.INIT,
                             f"moefusion: cannot open the model: {type(e).__name__}: {e}", traceback.format_exc())
            return False
        self._reset_stream_state()
        return True

    def do_stop(self):
        if self.session is not None:
            Gst.info(f"moefusion: {self.session.summary()}")
            self.session.close()
            self.session = None
        if self._pool is not None:
            self._pool.set_active(False)
        self._reset_stream_state()
        return True

    # -- caps ----------------------------------------------------------------------------------
    def do_sink_query(self, aggpad, query):
        if query.type == Gst.QueryType.CAPS:
            # Upstream that can give one of the element's formats (videoconvert, a decoder, a camera
            # with an NV12 mode) is offered those. Caps it cannot take are answered with themselves
            # (and, unfiltered, any raw video), so that they are linked and reach the caps event, which
            # fails with a message saying what to do, not GStreamer's "not-negotiated" or "could not
            # link" without a hint.
            filt = query.parse_caps()
            if filt is None:
                caps = ANY_RAW_CAPS
            else:
                caps = filt.intersect_full(aggpad.get_pad_template_caps(), Gst.CapsIntersectMode.FIRST)
                if caps.is_empty():
                    caps = filt
            query.set_caps_result(caps)
            return True
        return GstBase.Aggregator.do_sink_query(self, aggpad, query)

    def do_sink_event(self, aggpad, event):
        if event.type == Gst.EventType.CAPS:
            role = aggpad.get_name()
            try:
                self._formats[role] = self._input_format(role, event.parse_caps())
            except Exception as e:  # noqa: BLE001 - UserError and a bad caps string alike
                self._post_error(Gst.StreamError, Gst.StreamError.FORMAT, str(e))
                return False
        elif event.type == Gst.EventType.SEGMENT:
            seg = event.parse_segment()
            if seg.format != Gst.Format.TIME:
                self._post_error(Gst.StreamError, Gst.StreamError.FORMAT,
                                 f"moefusion: the {aggpad.get_name()} pad got a segment in {seg.format.value_nick}, "
                                 "not in time: frames are paired by running time (link decoded video)")
                return False
            self._segments[aggpad.get_name()] = seg.copy()
        return GstBase.Aggregator.do_sink_event(self, aggpad, event)

    def _input_format(self, role: str, caps):
        from moefusion.errors import UserError

        element = self._element
        what = caps.to_string()
        st = caps.get_structure(0) if caps.get_size() else None
        features = caps.get_features(0) if caps.get_size() else None
        if st is None or st.get_name() != "video/x-raw":
            raise UserError(f"moefusion: the {role} pad got {what}; it takes raw video (video/x-raw)")
        if features is not None and not features.is_any() and not features.contains("memory:SystemMemory"):
            raise UserError(f"moefusion: the {role} pad got video in {features.to_string()}; it takes frames in system "
                            "memory: put a converter before it (nvvideoconvert or nvvidconv ! video/x-raw on Jetson "
                            "and DeepStream, videoconvert elsewhere)")
        fmt = st.get_string("format")
        if fmt not in element.INPUT_FORMATS:
            raise UserError(f"moefusion: the {role} pad cannot take {fmt or 'these'} frames ({what}); it takes "
                            f"{', '.join(element.INPUT_FORMATS)}: put videoconvert before it")
        info = GstVideo.VideoInfo.new_from_caps(caps)
        if info is None:
            raise UserError(f"moefusion: the {role} pad got caps it cannot read: {what}")
        layout = element.Layout.from_info(info)
        fps = info.fps_n / info.fps_d if info.fps_d and info.fps_n else None
        c = info.colorimetry
        limited = None
        if info.finfo.flags & GstVideo.VideoFormatFlags.YUV:
            limited = c.range != getattr(GstVideo.VideoColorRange, "0_255")  # unknown: as decoders give, limited
        return element.input_format(role, layout, limited=limited, fps=fps, colorimetry=c.to_string())

    def do_negotiate(self):
        # The src caps come from the fused pictures (their size, the view, downstream's formats): set in
        # _write. A reconfigure asks downstream again.
        self._allowed = None
        return True

    def _allowed_formats(self) -> list:
        if self._allowed is None:
            peer = self.srcpad.peer_query_caps(SRC_CAPS)
            self._allowed = [f for f in ("I420", "BGR")
                             if peer.can_intersect(Gst.Caps.from_string(f"video/x-raw,format={f}"))]
        return self._allowed

    def _output_fps(self):
        rates = [f.fps for f in self._formats.values() if f.fps]
        return min(rates) if rates else None

    def _write(self, out):
        """One fused picture (element.Output) into a buffer, pushed on the src pad."""
        caps_str = self._element.output_caps(out, self._output_fps())
        if caps_str != self._caps_str:
            caps = Gst.Caps.from_string(caps_str)
            info = GstVideo.VideoInfo.new_from_caps(caps)
            if self._pool is not None:
                self._pool.set_active(False)
            pool = Gst.BufferPool.new()
            conf = pool.get_config()
            Gst.BufferPool.config_set_params(conf, caps, info.size, 2, 0)
            if not pool.set_config(conf) or not pool.set_active(True):
                raise RuntimeError(f"cannot set up a buffer pool of {info.size} bytes")
            self.set_src_caps(caps)
            self._pool, self._caps_str = pool, caps_str
            self._planes = tuple((info.offset[p], info.stride[p]) for p in range(info.finfo.n_planes))
            Gst.info(f"moefusion: output {caps_str}")
        ret, buf = self._pool.acquire_buffer(None)
        if ret != Gst.FlowReturn.OK:
            return ret
        ok, mi = buf.map(Gst.MapFlags.WRITE)
        if not ok:
            raise RuntimeError("cannot map an output buffer")
        try:
            self._element.write_frame(out.frame, mi.data, self._planes)
        finally:
            buf.unmap(mi)
        buf.pts = out.pts_ns
        buf.duration = out.duration_ns if out.duration_ns >= 0 else Gst.CLOCK_TIME_NONE
        if out.duration_ns >= 0:
            self._next_time = out.pts_ns + out.duration_ns
        return self.finish_buffer(buf)

    # -- data ----------------------------------------------------------------------------------
    def do_get_next_time(self):
        return self._next_time

    def do_flush(self):
        if self.session is not None and self.session.pairer is not None:
            self.session.begin(bool(self._live))
            self.session.restart("a seek or flush")
        self._next_time = Gst.CLOCK_TIME_NONE
        return Gst.FlowReturn.OK

    def _running_time(self, role: str, buf) -> int:
        """The buffer's running time on its pad (CLOCK_TIME_NONE: no timestamp, or outside the segment)."""
        seg = self._segments.get(role)
        ts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else buf.dts
        if seg is None or ts == Gst.CLOCK_TIME_NONE:
            return Gst.CLOCK_TIME_NONE
        return seg.to_running_time(Gst.Format.TIME, ts)

    def _pending(self, role: str, buf):
        rt = self._running_time(role, buf)
        if rt == Gst.CLOCK_TIME_NONE:
            return None  # outside the segment, or no timestamp: it cannot be paired by time
        dur = buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else -1
        return self._element.Pending(buf, self._formats[role], int(rt), int(dur))

    def do_aggregate(self, timeout):
        try:
            return self._aggregate()
        except Exception as e:  # noqa: BLE001 - an error message on the bus, and the stream stops
            self._post_error(Gst.StreamError, Gst.StreamError.FAILED, f"moefusion: {type(e).__name__}: {e}",
                             traceback.format_exc())
            return Gst.FlowReturn.ERROR

    def _aggregate(self):
        session = self.session
        if self._live is None:
            self._live = self.get_latency() != Gst.CLOCK_TIME_NONE
            session.begin(self._live)
        # Take the earlier of the two head buffers (both when level): the pairer then always has the
        # next frame of the stream it waits for, and a faster stream is not read ahead of the other.
        heads = {}
        for role, pad in self._sinks.items():
            buf = pad.peek_buffer()
            if buf is not None:
                heads[role] = buf
            elif pad.is_eos():
                session.end(role)
        if len(heads) == 2:
            t = {r: self._running_time(r, b) for r, b in heads.items()}
            if t["ir"] != t["vis"] and Gst.CLOCK_TIME_NONE not in t.values():
                later = "vis" if t["ir"] < t["vis"] else "ir"
                del heads[later]
        dropped = 0
        if any(role not in self._formats for role in heads):
            return Gst.FlowReturn.NOT_NEGOTIATED  # the caps were refused (the error message is posted)
        for role in heads:
            buf = self._sinks[role].pop_buffer()
            pending = self._pending(role, buf) if buf is not None else None
            if pending is None:
                dropped += buf is not None
                continue
            session.push(role, pending)
        if dropped:
            session.counters.drop("no_running_time", dropped)
        for pair in session.pairs():
            ret = self._fuse(pair)
            if ret != Gst.FlowReturn.OK:
                return ret
        if session.finished():  # the end of the first stream to end, as in run_pipeline
            return Gst.FlowReturn.EOS
        return Gst.FlowReturn.OK

    def _fuse(self, pair):
        ir, vis = pair.ir, pair.vis
        Gst.log(f"moefusion: pair IR {ir.ts_ns} VIS {vis.ts_ns} (running time, ns)")
        ok_ir, mi_ir = ir.buffer.map(Gst.MapFlags.READ)
        if not ok_ir:
            raise RuntimeError("cannot map an IR buffer")
        try:
            ok_vis, mi_vis = vis.buffer.map(Gst.MapFlags.READ)
            if not ok_vis:
                raise RuntimeError("cannot map a VIS buffer")
            try:
                return self.session.fuse(mi_ir.data, ir.fmt, mi_vis.data, vis.fmt, self._allowed_formats(),
                                         self._write, pts_ns=vis.ts_ns, duration_ns=vis.duration_ns)
            finally:
                vis.buffer.unmap(mi_vis)
        finally:
            ir.buffer.unmap(mi_ir)


GObject.type_register(MoEFusion)
__gstelementfactory__ = ("moefusion", Gst.Rank.NONE, MoEFusion)
