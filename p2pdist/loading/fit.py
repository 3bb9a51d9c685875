"""Loading into a module: ``load_into(module, ref)`` checks every name and shape from the
headers alone (no tensor bytes read) and, in strict mode, refuses before touching the module;
then it copies the verified tensors into the module's own parameters and buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from p2pdist.errors import FormatError
from p2pdist.formats.header import TensorSpec
from p2pdist.loading.lazy import open

log = logging.getLogger(__name__)

_CONVERTIBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class ShapeMismatch:
    """A tensor whose stored shape differs from the module's."""

    name: str
    expected: tuple[int, ...]
    found: tuple[int, ...]


@dataclass(frozen=True)
class LoadReport:
    """How a stored state dict fits a module: what loaded, what is missing or left over."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[ShapeMismatch, ...]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{len(self.loaded)} tensors fit"]
        if self.missing:
            lines.append(
                f"missing from the version ({len(self.missing)}): {', '.join(self.missing)}"
            )
        if self.unexpected:
            lines.append(
                f"not in the module ({len(self.unexpected)}): {', '.join(self.unexpected)}"
            )
        for m in self.mismatched:
            lines.append(f"shape of {m.name}: module {list(m.expected)}, version {list(m.found)}")
        return "; ".join(lines)


class StateDictMismatchError(FormatError):
    """A version whose tensors do not fit the module (strict ``load_into``); ``.report`` says how."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


def _module_device(module: torch.nn.Module) -> str:
    devices = {t.device for t in module.state_dict().values()}
    return str(devices.pop()) if len(devices) == 1 else "cpu"


def fit_report(targets: Mapping[str, torch.Tensor], specs: Mapping[str, TensorSpec]) -> LoadReport:
    """Compare a module's state dict with stored tensor specs (names and shapes only).

    A name the version lacks is not missing when it shares its tensor with one the version
    has (tied weights such as GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``).
    """
    provided = {id(targets[n]) for n in targets if n in specs}
    loaded, missing, mismatched = [], [], []
    for name, target in targets.items():
        spec = specs.get(name)
        if spec is None:
            if id(target) not in provided:
                missing.append(name)
        elif tuple(target.shape) != spec.shape:
            mismatched.append(ShapeMismatch(name, tuple(target.shape), spec.shape))
        else:
            loaded.append(name)
    unexpected = sorted(set(specs) - set(targets))
    return LoadReport(tuple(loaded), tuple(sorted(missing)), tuple(unexpected), tuple(mismatched))


def load_into(
    module: torch.nn.Module, ref: str, *, strict: bool = True, **load_kwargs: Any
) -> LoadReport:
    """Load ``ref`` into ``module``'s parameters and buffers (in place); return the report.

    Names and shapes are checked from the headers before any tensor bytes are read. Strict
    mode raises StateDictMismatchError on any missing, unexpected or mismatched tensor and
    leaves the module untouched; otherwise the tensors that fit are copied and the rest is
    in the report. Values are cast to the module's dtypes; ``device`` defaults to the
    module's device. Other keywords go to ``load``.
    """
    load_kwargs.setdefault("device", _module_device(module))
    targets = module.state_dict(keep_vars=True)
    with open(ref, **load_kwargs) as reader:
        report = fit_report(targets, {n: reader.spec(n) for n in reader.keys()})
        if strict and not report.ok:
            raise StateDictMismatchError(
                f"{ref} does not fit {type(module).__name__}: {report}; nothing was loaded "
                "(pass strict=False to load what fits)",
                report,
            )
        tensors = reader.load(report.loaded)
    with torch.no_grad():
        for name in report.loaded:
            targets[name].copy_(tensors[name])
    return report


__all__ = ["LoadReport", "ShapeMismatch", "StateDictMismatchError", "fit_report", "load_into"]
