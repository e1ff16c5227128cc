"""JSON log lines of a real worker process (LLMFLEET_LOG_FORMAT=json): a line a job
causes carries the job's id, agent, tier and the trace id its client stamped on it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from schemas import FleetConfig
from tasks.names import COMPLETE
from tests.conftest import client_with_worker, intercept_sends, wait_until


def test_a_job_s_worker_lines_carry_its_ids_and_its_client_s_trace(
        fleet_env: dict[str, str], fleet: FleetConfig, sim: Any, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    env = {**fleet_env, "LLMFLEET_LOG_FORMAT": "json"}
    with client_with_worker(env, fleet, "simple", "w-json-logs", log,
                            agent="json-logger") as client:
        # Given a job answered, its message then delivered again (as after a broker
        # restart): the worker says so in a line of its own
        sent = intercept_sends(client)
        handle = client.submit(f"log me {uuid.uuid4().hex}", tier="simple", max_tokens=8)
        handle.get(timeout=30)
        [message] = [m for m in sent if m.name == COMPLETE]
        client._wire.send(COMPLETE, message.args, message.queue, message.task_id)
        trace_id = message.jobs[0]["trace"]["trace_id"]

        def said() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in log.read_text().splitlines()
                     if line.startswith("{")]
            return [line for line in lines if line.get("job_id") == handle.job_id]

        wait_until(lambda: said(), timeout=30, interval=0.2)
    # Then that line is JSON with the job's ids and its client's trace id
    [line] = said()
    assert line["level"] == "WARNING" and "ran before" in line["message"]
    assert (line["agent"], line["tier"], line["trace_id"]) == ("json-logger", "simple",
                                                               trace_id)
    assert line["logger"].startswith("workers.") and "time" in line
