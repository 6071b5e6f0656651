"""Loading libmoefusion_kernels.so and calling its C ABI (kernels/include/moefusion_kernels.h) via ctypes."""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from ..errors import UserError
from .build import BUILD_COMMAND, DEFAULT_BUILD_DIR, LIB_NAME, PACKAGE_LIB_DIR

ABI_VERSION = 1
ENV_VAR = "MOEFUSION_KERNELS_LIB"

SUCCESS = 0
FLOAT32, FLOAT16, INT32 = 0, 1, 2
GATE_CLEAR_WORKSPACE = 1
MAX_EXPERTS = 32
MAX_K = 8


class KernelLibraryError(UserError):
    """libmoefusion_kernels.so is missing or unusable; the message names the paths and the build command."""


class KernelError(RuntimeError):
    """A kernel call was refused or failed (message from moefusion_last_error)."""


class MoeTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * 5),
        ("stride", ctypes.c_int64 * 5),
    ]


_P = ctypes.POINTER(MoeTensor)
_SIGNATURES = {
    "moefusion_abi_version": ([], ctypes.c_int),
    "moefusion_build_info": ([], ctypes.c_char_p),
    "moefusion_status_name": ([ctypes.c_int], ctypes.c_char_p),
    "moefusion_last_error": ([], ctypes.c_char_p),
    "moefusion_gate_workspace_size": (
        [ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_size_t)],
        ctypes.c_int,
    ),
    "moefusion_gate": (
        [_P, _P, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _P, _P, ctypes.c_void_p, ctypes.c_size_t,
         ctypes.c_uint32, ctypes.c_void_p],
        ctypes.c_int,
    ),
    "moefusion_attention_split": ([_P, _P, _P, _P, _P, ctypes.c_void_p], ctypes.c_int),
    "moefusion_combine": ([_P, _P, _P, ctypes.c_void_p], ctypes.c_int),
    "moefusion_expert_conv3x3_combine": ([_P, _P, _P, _P, _P, _P, ctypes.c_void_p], ctypes.c_int),
    "moefusion_host_gate": (
        [_P, _P, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _P, _P, ctypes.c_void_p, ctypes.c_size_t,
         ctypes.c_uint32],
        ctypes.c_int,
    ),
    "moefusion_host_attention_split": ([_P, _P, _P, _P, _P], ctypes.c_int),
    "moefusion_host_combine": ([_P, _P, _P], ctypes.c_int),
    "moefusion_host_expert_conv3x3_combine": ([_P, _P, _P, _P, _P, _P], ctypes.c_int),
}
EXPORTED_SYMBOLS = tuple(_SIGNATURES)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_path: Path | None = None


def candidate_paths() -> list[Path]:
    """Where the library is looked for, in order."""
    paths = []
    if os.environ.get(ENV_VAR):
        paths.append(Path(os.environ[ENV_VAR]))
    paths.append(PACKAGE_LIB_DIR / LIB_NAME)
    paths.append(DEFAULT_BUILD_DIR / LIB_NAME)
    return paths


def library_path() -> Path | None:
    """The library that load_library() would load, or None."""
    if _lib_path is not None:
        return _lib_path
    for p in candidate_paths():
        if p.is_file():
            return p
    return None


def missing_message() -> str:
    looked = ", ".join(str(p) for p in candidate_paths())
    return (
        f"{LIB_NAME} not found (looked in: {looked}). Build it with `{BUILD_COMMAND}` "
        f"(needs nvcc and cmake; writes {DEFAULT_BUILD_DIR / LIB_NAME}) or point ${ENV_VAR} at a built copy"
    )


def load_library(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """Load (once) and check the library. Raises KernelLibraryError with the fix when it is missing."""
    global _lib, _lib_path
    with _lock:
        if _lib is not None and path is None:
            return _lib
        target = Path(path) if path else library_path()
        if target is None or not target.is_file():
            raise KernelLibraryError(missing_message() if path is None else f"{target}: no such file")
        try:
            lib = ctypes.CDLL(str(target), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        except OSError as e:
            raise KernelLibraryError(f"{target}: cannot be loaded ({e}); rebuild it with `{BUILD_COMMAND}`") from e
        for name, (argtypes, restype) in _SIGNATURES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError as e:
                raise KernelLibraryError(
                    f"{target}: symbol {name} missing (an older build?); rebuild it with `{BUILD_COMMAND}`"
                ) from e
            fn.argtypes = argtypes
            fn.restype = restype
        version = lib.moefusion_abi_version()
        if version != ABI_VERSION:
            raise KernelLibraryError(
                f"{target}: ABI version {version}, this package needs {ABI_VERSION}; rebuild it with `{BUILD_COMMAND}`"
            )
        _lib, _lib_path = lib, target
        return lib


def available() -> bool:
    """True when the library is found and loads (no GPU needed)."""
    try:
        load_library()
        return True
    except KernelLibraryError:
        return False


def build_info() -> str:
    return load_library().moefusion_build_info().decode()


def check(status: int, what: str) -> None:
    if status != SUCCESS:
        lib = load_library()
        name = lib.moefusion_status_name(status).decode()
        raise KernelError(f"{what}: {name}: {lib.moefusion_last_error().decode()}")


def _dtype_code(dtype) -> int:
    import torch

    if dtype == torch.float32:
        return FLOAT32
    if dtype == torch.float16:
        return FLOAT16
    if dtype == torch.int32:
        return INT32
    raise KernelError(f"dtype {dtype} is not supported by the kernels (float32, float16, int32)")


def desc(t) -> MoeTensor:
    """A descriptor of a torch tensor or NumPy array (None -> an absent optional tensor)."""
    d = MoeTensor()
    if t is None:
        return d
    if hasattr(t, "data_ptr"):  # torch
        d.data = t.data_ptr() if t.numel() else 1 << 8  # any aligned non-null pointer for empty tensors
        d.dtype = _dtype_code(t.dtype)
        shape, strides = t.shape, t.stride()
    else:  # numpy
        import numpy as np

        codes = {np.dtype(np.float32): FLOAT32, np.dtype(np.float16): FLOAT16, np.dtype(np.int32): INT32}
        if t.dtype not in codes:
            raise KernelError(f"dtype {t.dtype} is not supported by the kernels (float32, float16, int32)")
        d.data = t.ctypes.data if t.size else 1 << 8
        d.dtype = codes[t.dtype]
        shape, strides = t.shape, tuple(s // t.itemsize for s in t.strides)
    if len(shape) > 5:
        raise KernelError(f"tensors of at most 5 dimensions, got {len(shape)}")
    d.ndim = len(shape)
    for i, (n, s) in enumerate(zip(shape, strides)):
        d.shape[i] = n
        d.stride[i] = s
    return d
