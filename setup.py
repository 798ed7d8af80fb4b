"""The one compiled piece: the sampler's CPU matrix-vector kernel (jaxvoice/native/packed_matmul.cc), an XLA
FFI custom call loaded with ctypes. Everything else is in pyproject.toml. The extension is optional: where it
does not build (no C++ compiler), jaxvoice installs without it and samples with XLA's own dot."""

from pathlib import Path

import jaxlib  # the build requirement that brings XLA's FFI headers (pyproject.toml [build-system])
from setuptools import Extension, setup

include = str(Path(jaxlib.__file__).parent / "include")
setup(
    ext_modules=[
        Extension(
            "jaxvoice._packed_matmul",
            sources=["jaxvoice/native/packed_matmul.cc"],
            include_dirs=[include],
            language="c++",
            extra_compile_args=["-std=c++17", "-O3"],
            optional=True,
        )
    ]
)
