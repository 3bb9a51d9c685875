"""Build of p2pdist's one C extension, the delta codec's rANS kernel ``p2pdist.delta._ans``:
p2pdist/delta/_ans/module.c (the Python module), encode.c and decode.c, sharing ans.h, with
their x86-64 vector code in x86_encode.h and x86_decode.h.

Everything else about the package is in pyproject.toml; ``pip install -e .`` (``make
install``) compiles the extension in place. It needs a C compiler and Python's headers.
"""

from setuptools import Extension, setup

ANS_DIR = "p2pdist/delta/_ans"
ANS_SOURCES = ("module", "encode", "decode")
ANS_HEADERS = ("ans", "x86_encode", "x86_decode")

setup(
    ext_modules=[
        Extension(
            "p2pdist.delta._ans",
            sources=[f"{ANS_DIR}/{name}.c" for name in ANS_SOURCES],
            depends=[f"{ANS_DIR}/{name}.h" for name in ANS_HEADERS],
            extra_compile_args=["-O3", "-fno-strict-aliasing"],
        )
    ]
)
