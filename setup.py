"""Build script for the aligner's C++ extension (``fusekern.align._C``); metadata lives in pyproject.toml."""

import sys
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

# Compile the sources in parallel (all cores; FUSEKERN_BUILD_JOBS=N to choose).
ParallelCompile("FUSEKERN_BUILD_JOBS", default=0).install()

_threads = ["-pthread"] if sys.platform != "win32" else []

ext_modules = [
    Pybind11Extension(
        "fusekern.align._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        depends=sorted(glob("csrc/*.h")),  # rebuild when a header changes (packaged by MANIFEST.in)
        cxx_std=17,
        extra_compile_args=["-O3", *_threads],
        extra_link_args=_threads,
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
