"""LLMFLEET_LOG_FORMAT=json: JSON lines with the job's ids in the fleet's processes; a
host application's logging left as it is, the client adding its fields to its own
records only. Each case runs in a fresh interpreter: logging is per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

#: A client whose broker does not answer: it logs a warning about the job it is
#: submitting, then the submit fails.
CLIENT = """
from schemas import FleetUnavailableError
from tasks import FleetClient
client = FleetClient(redis_url="redis://127.0.0.1:1/0", agent="lonely")
try:
    client.submit("hello", tier="simple", user="u9")
except FleetUnavailableError:
    pass
client.close()
"""


def run(code: str, log_format: str | None = "json") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLMFLEET_LOG_FORMAT", "REDIS_URL") and not k.startswith("OTEL_")}
    if log_format:
        env["LLMFLEET_LOG_FORMAT"] = log_format
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60, check=True)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_client_without_host_logging_writes_json_with_its_job(tmp_path: Any) -> None:
    # When a client logs with no logging configured by its host
    done = run(CLIENT)
    # Then its warning is one JSON line naming the job it was submitting
    lines = json_lines(done.stderr)
    assert len(lines) == 1 and done.stderr.strip().startswith("{"), done.stderr
    line = lines[0]
    assert line["logger"] == "tasks.client" and line["level"] == "WARNING"
    assert line["message"].startswith("not sent: ")
    assert (line["agent"], line["user"], line["tier"]) == ("lonely", "u9", "simple")
    assert len(line["job_id"]) == 32 and len(line["trace_id"]) == 32
    assert line["time"].endswith("+00:00")


def test_a_host_s_logging_is_left_alone_but_sees_the_job(tmp_path: Any) -> None:
    # Given a host that configured logging its own way
    done = run("import logging\n"
               "logging.basicConfig(format='HOST %(levelname)s %(job_id)s %(message)s')\n"
               + CLIENT + "\nprint([type(h.formatter).__name__ for h in "
               "logging.getLogger().handlers])")
    # Then the client's record went through the host's handler, with the job's id
    assert not json_lines(done.stderr), done.stderr
    host = [line for line in done.stderr.splitlines() if line.startswith("HOST WARNING ")]
    assert len(host) == 1 and "not sent: " in host[0]
    assert len(host[0].split()[2]) == 32  # the job id
    # And its root logger still has its own handler and formatter only
    assert done.stdout.strip() == "['Formatter']"


def test_text_stays_the_default() -> None:
    done = run(CLIENT, log_format=None)
    assert not json_lines(done.stderr)
    assert "not sent: " in done.stderr and "ConnectionError" in done.stderr


def test_a_fleet_process_logs_json_lines_with_the_bound_context() -> None:
    done = run("""
        import logging
        from tasks._context import bound
        from workers.observability.logs import configure_logging
        configure_logging("INFO", "json")
        with bound(job_id="j" * 32, agent="coder", trace_id="a" * 32):
            logging.getLogger("workers.x").info("inside %s", "the job")
            try:
                1 / 0
            except ZeroDivisionError:
                logging.getLogger("workers.x").exception("failed")
        logging.getLogger("workers.x").warning("outside", extra={"tier": "simple"})
    """)
    inside, failed, outside = json_lines(done.stderr)
    assert inside["message"] == "inside the job" and inside["level"] == "INFO"
    assert (inside["job_id"], inside["agent"], inside["trace_id"]) == ("j" * 32, "coder",
                                                                     "a" * 32)
    assert "ZeroDivisionError" in failed["exc_info"] and failed["job_id"] == "j" * 32
    assert outside["tier"] == "simple" and "job_id" not in outside
    assert len(done.stderr.splitlines()) == 3  # the traceback is inside its line


def test_text_lines_of_a_fleet_process_keep_their_format() -> None:
    done = run("""
        import logging
        from workers.observability.logs import configure_logging
        configure_logging("INFO", "text")
        logging.getLogger("workers.x").info("plain")
    """, log_format=None)
    assert done.stderr.strip().endswith("INFO workers.x: plain")


def test_uvicorn_s_loggers_write_json_in_the_api_s_processes() -> None:
    done = run("""
        import logging, logging.config
        from tasks._context import bound
        from workers.observability.logs import uvicorn_log_config
        logging.config.dictConfig(uvicorn_log_config("info"))
        with bound(trace_id="b" * 32):
            logging.getLogger("uvicorn.error").info("Started server process")
            logging.getLogger("uvicorn.access").info('%s - "%s" %d', "1.2.3.4", "GET /", 200)
            logging.getLogger("workers.api.app").warning("from the app")
    """)
    server, app = json_lines(done.stderr)
    access, = json_lines(done.stdout)
    assert server["logger"] == "uvicorn.error" and server["trace_id"] == "b" * 32
    assert access["message"] == '1.2.3.4 - "GET /" 200' and access["trace_id"] == "b" * 32
    assert app["logger"] == "workers.api.app" and app["level"] == "WARNING"


def test_celery_s_handlers_are_turned_to_json(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from tasks._context import bound
    from workers.observability.logs import to_json

    # Given a logger with a handler Celery made (its own format)
    logger = logging.getLogger("tests.celery-like")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s] %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        # When it is turned to JSON (twice: Celery signals for each logger it sets up)
        to_json(logger)
        to_json(logger)
        with bound(job_id="c" * 32):
            logger.warning("task said %s", "hi")
    finally:
        logger.removeHandler(handler)
    # Then its lines are JSON with the job's id, and its filter was added once
    line, = json_lines(capsys.readouterr().out)
    assert line["message"] == "task said hi" and line["job_id"] == "c" * 32
    assert len(handler.filters) == 1
