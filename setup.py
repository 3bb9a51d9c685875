"""Build of p2pdist's one C extension, the delta codec's rANS kernel (p2pdist/_delta_ans.c, with
its x86-64 vector code in p2pdist/_delta_ans_x86_*.h).

Everything else about the package is in pyproject.toml; ``pip install -e .`` (``make
install``) compiles the extension in place. It needs a C compiler and Python's headers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "p2pdist._delta_ans",
            sources=["p2pdist/_delta_ans.c"],
            depends=["p2pdist/_delta_ans_x86_encode.h", "p2pdist/_delta_ans_x86_decode.h"],
            extra_compile_args=["-O3", "-fno-strict-aliasing"],
        )
    ]
)
