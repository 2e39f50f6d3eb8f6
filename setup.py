"""Build script for the C++ extension (``fusekern._C``); metadata lives in pyproject.toml."""

import sys
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

_threads = ["-pthread"] if sys.platform != "win32" else []

ext_modules = [
    Pybind11Extension(
        "fusekern._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3", *_threads],
        extra_link_args=_threads,
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
