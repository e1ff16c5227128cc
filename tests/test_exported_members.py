"""The public surface is deliberate: what agents import is listed and importable."""

from __future__ import annotations

import schemas
import tasks


def test_the_agent_api_is_exported() -> None:
    assert {"FleetClient", "FleetAgent", "JobHandle", "BatchHandle"} <= set(tasks.__all__)
    for name in tasks.__all__:
        assert getattr(tasks, name) is not None


def test_every_schema_name_is_exported_once() -> None:
    assert len(schemas.__all__) == len(set(schemas.__all__))
    for name in schemas.__all__:
        assert hasattr(schemas, name), name
    assert {"CompletionJob", "CompletionResult", "FleetError", "FleetConfig"} <= set(
        schemas.__all__)


def test_agents_load_no_worker_code() -> None:
    import subprocess
    import sys

    code = ("import sys, tasks; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('workers', 'sqlalchemy', 'httpx', 'aiohttp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
