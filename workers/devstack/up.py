"""``llmfleet up``: the fleet, long-running, until Ctrl-C."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from contextlib import ExitStack
from types import FrameType

from rich.console import Console

from schemas import load_config
from tasks import FleetClient
from workers.devstack.services import export_service_env, resolve_services
from workers.devstack.supervisor import Supervisor
from workers.store.engines import migrate, safe_url

__all__ = ["run_up"]


def _flower_auth(console: Console) -> str:
    user = os.environ.get("LLMFLEET_FLOWER_USER") or "admin"
    password = os.environ.get("LLMFLEET_FLOWER_PASSWORD")
    if not password:
        password = secrets.token_urlsafe(12)
        console.print(f"Flower login: {user} / {password} (generated; set "
                      f"LLMFLEET_FLOWER_USER and LLMFLEET_FLOWER_PASSWORD to choose)")
    return f"{user}:{password}"


def run_up(concurrency: int = 32, flower_port: int = 5555, simulator_port: int = 8765,
           api_port: int = 8000) -> int:
    console = Console()
    settings, fleet = load_config()
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with ExitStack() as stack:
        services = resolve_services(settings)
        export_service_env(services)
        assert services.database_url is not None
        migrate(services.database_url)
        if services.started:
            from workers.devstack.embedded import stop_stack

            stack.callback(stop_stack, settings.resolved_data_dir)
        supervisor = Supervisor(env=os.environ, log_dir=settings.resolved_data_dir / "logs" / "up")
        stack.callback(supervisor.stop)
        from workers.providers import missing_keys

        if not settings.simulator_url and \
                set(missing_keys(fleet, fleet.tiers, os.environ)) == set(fleet.providers):
            supervisor.start("simulator", ["simulator", "--port", str(simulator_port)])
            os.environ["LLMFLEET_SIMULATOR_URL"] = f"http://127.0.0.1:{simulator_port}"
            console.print(f"[yellow]No provider key is set: the provider simulator answers[/] "
                          f"at http://127.0.0.1:{simulator_port}")
            settings, fleet = load_config()
        for tier in fleet.tiers:
            supervisor.start(f"worker-{tier}", ["worker", "--tiers", tier, "--concurrency",
                                                str(concurrency)])
        supervisor.start("beat", ["beat"])
        supervisor.start_exec("flower", [
            sys.executable, "-m", "celery", "--app", "workers.app:app", "flower",
            f"--port={flower_port}", "--address=127.0.0.1"],
            extra_env={"FLOWER_BASIC_AUTH": _flower_auth(console)})
        supervisor.start("api", ["api", "--port", str(api_port)])
        client = stack.enter_context(FleetClient(redis_url=services.redis_url, fleet=fleet))
        supervisor.wait_for_workers(client._app, len(fleet.tiers))
        admin = "on" if os.environ.get("LLMFLEET_ADMIN_KEY") else "off"
        dashboard = "log in with LLMFLEET_ADMIN_KEY" if admin == "on" else \
            "set LLMFLEET_ADMIN_KEY to turn it on"
        console.print(f"Fleet up. Redis: {safe_url(services.redis_url)}\n"
                      f"Postgres: {safe_url(services.database_url or '')}\n"
                      f"Flower: http://127.0.0.1:{flower_port}\n"
                      f"API: http://127.0.0.1:{api_port}/v1 (keys: `llmfleet keys create`; "
                      f"admin API {admin}: LLMFLEET_ADMIN_KEY)\n"
                      f"Dashboard: http://127.0.0.1:{api_port}/dashboard ({dashboard})\n"
                      f"Logs: {supervisor.log_dir}\nCtrl-C stops it.")
        while not stop:
            time.sleep(0.5)
            supervisor.check_alive()
        console.print("Stopping...")
    return 0
