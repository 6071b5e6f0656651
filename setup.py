"""Build hook: compile the CUDA kernel library during `pip install` when nvcc and cmake exist.

Everything else is in pyproject.toml. MOEFUSION_BUILD_KERNELS=0 skips the build, =1 makes a
failure an error; by default a machine without nvcc/cmake (or a failed build) installs the package
without the kernels and prints how to build them later (`python -m moefusion.kernels.build --install`).
"""
import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_with_kernels(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        spec = importlib.util.spec_from_file_location("_moefusion_kernel_build", os.path.join(here, "moefusion", "kernels", "build.py"))
        try:
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mod.setuptools_hook(os.path.join(self.build_lib, "moefusion", "kernels", "lib"))
        except Exception as e:  # noqa: BLE001 - the package works without the kernels
            if os.environ.get("MOEFUSION_BUILD_KERNELS", "auto").lower() in ("1", "on", "yes", "true"):
                raise
            print(f"moefusion: CUDA kernels not built ({type(e).__name__}: {e}); the package works without "
                  "them; build later with `python -m moefusion.kernels.build --install`", file=sys.stderr)


setup(cmdclass={"build_py": build_py_with_kernels})
