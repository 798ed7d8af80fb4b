"""The compiled pieces, XLA FFI custom calls for the CPU loaded with ctypes (jaxvoice/native.py): the sampler's
matrix-vector kernel (jaxvoice/native/packed_matmul.cc), the tiered sample level's frame
(jaxvoice/native/sample_frame.cc) and the LSTM's time loops for training (jaxvoice/native/lstm_recurrence.cc).
Everything else is in pyproject.toml. All are optional: where they do not build (no C++ compiler), jaxvoice
installs without them and uses XLA's own ops."""

from pathlib import Path

import jaxlib  # the build requirement that brings XLA's FFI headers (pyproject.toml [build-system])
from setuptools import Extension, setup

include = str(Path(jaxlib.__file__).parent / "include")
setup(
    ext_modules=[
        Extension(
            f"jaxvoice._{name}",
            sources=[f"jaxvoice/native/{name}.cc"],
            depends=["jaxvoice/native/packed_tiles.h"],
            include_dirs=[include],
            language="c++",
            extra_compile_args=["-std=c++17", "-O3"],
            optional=True,
        )
        for name in ("packed_matmul", "sample_frame", "lstm_recurrence")
    ]
)
