"""Guards on the public surface (httpx's habit): __all__ sorted, complete, and importable."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import p2pdist
from p2pdist import errors


def test_all_is_sorted_and_resolves() -> None:
    assert p2pdist.__all__ == sorted(p2pdist.__all__)
    for name in p2pdist.__all__:
        assert getattr(p2pdist, name) is not None, name


def test_every_error_is_exported_and_rooted() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.P2PDistError)
        assert name in p2pdist.__all__


def test_import_is_light() -> None:
    code = "import sys, p2pdist; print('torch' in sys.modules, 'libtorrent' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_no_submodule_shadows_a_public_name() -> None:
    """Importing a submodule binds it as an attribute of the package: a module named like a
    public function (p2pdist/fetch.py once) replaced ``p2pdist.fetch`` the first time anything
    imported it, and the README's ``p2pdist.fetch(...)`` became 'module is not callable'."""
    modules = {m.name for m in pkgutil.iter_modules(p2pdist.__path__)}
    assert not modules & set(p2pdist.__all__)
    imports = "; ".join(f"import p2pdist.{m}" for m in sorted(modules))
    code = (
        f"import p2pdist; {imports}\n"
        "import p2pdist.trainer\n"
        "names = ('fetch', 'follow', 'load', 'load_into', 'open', 'publish')\n"
        "print(all(callable(getattr(p2pdist, n)) for n in names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"]
