"""TrackerState.refresh: how a replica learns of versions other replicas published."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from p2pdist.tracker import TrackerSettings
from p2pdist.tracker.state import TrackerState


async def test_a_refresh_sees_what_was_published_before_it_was_asked_and_floods_share_looks(
    tmp_path: Path, monkeypatch: Any
) -> None:
    state = TrackerState(TrackerSettings(data_dir=tmp_path))
    await state.open()
    try:
        looks: list[float] = []
        loop = asyncio.get_running_loop()
        real_db_call = state.db_call

        async def counted(fn: Any, *args: Any) -> Any:
            looks.append(loop.time())
            await asyncio.sleep(0.05)  # a query takes a while
            return await real_db_call(fn, *args)

        monkeypatch.setattr(state, "db_call", counted)
        await state.refresh()
        assert len(looks) == 1
        # asked just after a look began: that look may have missed what was published
        # before the ask, so the caller waits for the next one (not skipped, as before)
        asked = loop.time()
        await state.refresh(min_age=0.2)
        assert len(looks) == 2 and looks[1] >= asked
        # a flood of 200 callers at once: one more look between them, not 200
        await asyncio.gather(*(state.refresh(min_age=0.2) for _ in range(200)))
        assert len(looks) == 3
        assert looks[2] - looks[1] >= 0.2  # min_age apart
    finally:
        await state.close()
