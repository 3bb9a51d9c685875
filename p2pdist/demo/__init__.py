"""``p2pdist demo``: the whole system on one machine (``runner``), with consumer processes
(``consumer``) that follow the trainer's versions and check each one's perplexity. It trains
and loads a model, so it needs torch (``p2pdist[torch]``)."""

from __future__ import annotations

from p2pdist.extras import require_torch

require_torch("p2pdist demo")
