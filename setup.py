"""Builds the optional C extension onebit.kernels._native; everything else is in pyproject.toml.

The extension links nothing but libc and pthreads (no libtorch, no OpenMP: its own small
thread pool, ob_pool.c, has a cheaper fork/join) and is compiled without -march
flags: each ISA variant carries a target attribute and is chosen at run time. When it cannot be
built (no compiler), onebit still installs and its kernels fall back to the numpy reference.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = [
    "onebit/kernels/csrc/ob_module.c",
    "onebit/kernels/csrc/ob_driver.c",
    "onebit/kernels/csrc/ob_pool.c",
    "onebit/kernels/csrc/ob_generic.c",
    "onebit/kernels/csrc/ob_avx2.c",
    "onebit/kernels/csrc/ob_avx512.c",
    "onebit/kernels/csrc/ob_int8.c",
    "onebit/kernels/csrc/ob_conv.c",
    "onebit/kernels/csrc/ob_rows.c",
]
# -ffp-contract=off keeps float results identical across ISA paths (tests compare them)
COMPILE = ["-O3", "-pthread", "-ffp-contract=off"]
LINK = ["-pthread", "-lm"]


class OptionalBuildExt(build_ext):
    """Build the kernels if possible; a failure is a warning (ONEBIT_REQUIRE_NATIVE=1: an error)."""

    def run(self):
        try:
            super().run()
        except Exception as e:
            self._fail(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:
            self._fail(e)

    def _fail(self, e):
        if os.environ.get("ONEBIT_REQUIRE_NATIVE") == "1":
            raise e
        sys.stderr.write(f"onebit: native kernels not built ({e}); using the numpy reference.\n")


setup(
    ext_modules=[
        Extension(
            "onebit.kernels._native",
            sources=SOURCES,
            include_dirs=["onebit/kernels/csrc"],
            depends=["onebit/kernels/csrc/ob_kernels.h", "onebit/kernels/csrc/ob_rows_body.h"],
            extra_compile_args=COMPILE,
            extra_link_args=LINK,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
