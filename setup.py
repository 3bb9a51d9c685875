"""Build of p2pdist's one C extension, the delta codec's rANS kernel (p2pdist/_delta_ans.c).

Everything else about the package is in pyproject.toml; ``pip install -e .`` (``make
install``) compiles the extension in place. It needs a C compiler and Python's headers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "p2pdist._delta_ans",
            sources=["p2pdist/_delta_ans.c"],
            extra_compile_args=["-O3", "-fno-strict-aliasing"],
        )
    ]
)
