"""Build of p2pdist's one C extension, the delta codec's rANS kernel: p2pdist/_delta_ans.c (the
Python module), _delta_ans_encode.c and _delta_ans_decode.c, sharing _delta_ans.h, with their
x86-64 vector code in _delta_ans_x86_*.h.

Everything else about the package is in pyproject.toml; ``pip install -e .`` (``make
install``) compiles the extension in place. It needs a C compiler and Python's headers.
"""

from setuptools import Extension, setup

ANS_SOURCES = ("_delta_ans", "_delta_ans_encode", "_delta_ans_decode")
ANS_HEADERS = ("_delta_ans", "_delta_ans_x86_encode", "_delta_ans_x86_decode")

setup(
    ext_modules=[
        Extension(
            "p2pdist._delta_ans",
            sources=[f"p2pdist/{name}.c" for name in ANS_SOURCES],
            depends=[f"p2pdist/{name}.h" for name in ANS_HEADERS],
            extra_compile_args=["-O3", "-fno-strict-aliasing"],
        )
    ]
)
