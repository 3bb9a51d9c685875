"""The training side of p2pdist: publishing checkpoints from a training loop, and a small LM.

``CheckpointPublisher`` is what a training loop calls; ``p2pdist.trainer.lm`` is the small
language model the demo and the examples train. Both need torch (``p2pdist[torch]``).
"""

from __future__ import annotations

from p2pdist.extras import require_torch

require_torch("p2pdist.trainer")

from p2pdist.trainer.publisher import CheckpointPublisher, cpu_snapshot  # noqa: E402

__all__ = ["CheckpointPublisher", "cpu_snapshot"]
