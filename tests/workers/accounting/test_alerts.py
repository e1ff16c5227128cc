"""Alert delivery over real sockets: a local webhook server and a tiny SMTP sink."""

from __future__ import annotations

import datetime as dt
import email
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from schemas import ConfigError
from workers.accounting.alerts import Alert, Alerter

SECRET = "T0KEN-xyzzy-SECRET"
ALERT = Alert(budget="team-daily", period_start=dt.datetime(2031, 1, 1, tzinfo=dt.UTC),
              level="exceeded", spent_usd=12.5, limit_usd=10.0,
              message="Budget 'team-daily' is exceeded: $12.50 of $10.00 spent (125%).")


class _Webhook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server: Any = self.server
        server.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(server.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def webhook() -> Iterator[Any]:
    """A Slack-like webhook on 127.0.0.1; set ``.status`` to make it fail."""
    server: Any = HTTPServer(("127.0.0.1", 0), _Webhook)
    server.received, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}/services/{SECRET}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        server: Any = self.server
        self.reply("220 sink ESMTP")
        envelope: dict[str, Any] = {"to": []}
        while line := self.rfile.readline():
            verb = line.decode().strip().split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "MAIL":
                envelope["from"] = line.decode().strip()
                self.reply("250 OK")
            elif verb == "RCPT":
                envelope["to"].append(line.decode().strip())
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 go ahead")
                data = b"".join(iter(self.rfile.readline, b".\r\n"))
                server.messages.append((envelope, email.message_from_bytes(data)))
                self.reply("250 queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


@pytest.fixture()
def smtp() -> Iterator[Any]:
    server: Any = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    server.messages = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_only_the_log_is_on_without_configuration(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.accounting.alerts"):
        outcome = Alerter.from_env({}).deliver(ALERT)
    assert outcome == {"log": "sent", "webhook": "off", "email": "off"}
    assert ALERT.message in caplog.text


def test_the_webhook_receives_slack_json(webhook: Any) -> None:
    # Given an alerter pointed at a local webhook
    alerter = Alerter.from_env({"LLMFLEET_ALERT_WEBHOOK_URL": webhook.url})
    # When an alert is delivered
    outcome = alerter.deliver(ALERT)
    # Then the webhook got one Slack-compatible JSON body
    assert outcome == {"log": "sent", "webhook": "sent", "email": "off"}
    assert webhook.received == [(f"/services/{SECRET}", "application/json",
                                 {"text": ALERT.message})]


def test_a_failing_webhook_is_retried_and_reported_without_its_url(
        webhook: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Given a webhook answering 500
    webhook.status = 500
    alerter = Alerter.from_env({"LLMFLEET_ALERT_WEBHOOK_URL": webhook.url}, backoff_s=0.01)
    # When an alert is delivered
    with caplog.at_level(logging.WARNING, logger="workers.accounting.alerts"):
        outcome = alerter.deliver(ALERT)
    # Then three tries were made, the failure is reported, and nothing raised or leaked
    assert len(webhook.received) == 3
    assert outcome["webhook"].startswith("failed: ") and "500" in outcome["webhook"]
    assert outcome["log"] == "sent"
    assert SECRET not in json.dumps(outcome) and SECRET not in caplog.text
    assert "webhook" in caplog.text


def test_an_unreachable_webhook_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_free_port()}/hooks/{SECRET}"
    alerter = Alerter.from_env({"LLMFLEET_ALERT_WEBHOOK_URL": url}, backoff_s=0)
    with caplog.at_level(logging.WARNING, logger="workers.accounting.alerts"):
        outcome = alerter.deliver(ALERT)
    assert outcome["webhook"].startswith("failed: ConnectError")
    assert SECRET not in json.dumps(outcome) and SECRET not in caplog.text


def test_email_reaches_the_smtp_server(smtp: Any) -> None:
    # Given an alerter with SMTP to two recipients
    env = {"LLMFLEET_SMTP_HOST": "127.0.0.1", "LLMFLEET_SMTP_PORT": str(smtp.server_address[1]),
           "LLMFLEET_SMTP_FROM": "fleet@example.com",
           "LLMFLEET_SMTP_TO": "ops@example.com, cfo@example.com",
           "LLMFLEET_SMTP_STARTTLS": "false"}
    # When an alert is delivered
    outcome = Alerter.from_env(env).deliver(ALERT)
    # Then one message reached the sink, addressed to both
    assert outcome == {"log": "sent", "webhook": "off", "email": "sent"}
    assert len(smtp.messages) == 1
    envelope, message = smtp.messages[0]
    assert isinstance(message, Message)
    assert len(envelope["to"]) == 2 and "fleet@example.com" in envelope["from"]
    assert message["Subject"] == "[llmfleet] budget team-daily: exceeded"
    assert ALERT.message in message.get_payload()


def test_a_failing_login_never_shows_the_password(smtp: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Given a server without AUTH and an alerter that must log in
    env = {"LLMFLEET_SMTP_HOST": "127.0.0.1", "LLMFLEET_SMTP_PORT": str(smtp.server_address[1]),
           "LLMFLEET_SMTP_TO": "ops@example.com", "LLMFLEET_SMTP_USER": "fleet",
           "LLMFLEET_SMTP_PASSWORD": SECRET}
    alerter = Alerter.from_env(env, backoff_s=0)
    # When an alert is delivered
    with caplog.at_level(logging.WARNING, logger="workers.accounting.alerts"):
        outcome = alerter.deliver(ALERT)
    # Then email failed, after three tries, without the password anywhere
    assert outcome["email"].startswith("failed: SMTPNotSupportedError")
    assert caplog.text.count("email attempt") == 3
    assert smtp.messages == []
    assert SECRET not in json.dumps(outcome) and SECRET not in caplog.text
    assert SECRET not in repr(alerter.__dict__)


def test_an_unreachable_smtp_server_is_reported() -> None:
    env = {"LLMFLEET_SMTP_HOST": "127.0.0.1", "LLMFLEET_SMTP_PORT": str(_free_port()),
           "LLMFLEET_SMTP_TO": "ops@example.com"}
    outcome = Alerter.from_env(env, backoff_s=0).deliver(ALERT)
    assert outcome["email"].startswith("failed: ConnectionRefusedError")


@pytest.mark.parametrize(("env", "key"), [
    ({"LLMFLEET_SMTP_HOST": "mail"}, "LLMFLEET_SMTP_TO"),
    ({"LLMFLEET_SMTP_HOST": "mail", "LLMFLEET_SMTP_TO": "a@b", "LLMFLEET_SMTP_PORT": "x"},
     "LLMFLEET_SMTP_PORT"),
    ({"LLMFLEET_SMTP_HOST": "mail", "LLMFLEET_SMTP_TO": "a@b",
      "LLMFLEET_SMTP_STARTTLS": "maybe"}, "LLMFLEET_SMTP_STARTTLS"),
    ({"LLMFLEET_ALERT_WEBHOOK_URL": f"hooks.example/{SECRET}"}, "LLMFLEET_ALERT_WEBHOOK_URL"),
])
def test_bad_settings_stop_start_up_naming_the_variable(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Alerter.from_env(env)
    assert raised.value.key == key and SECRET not in str(raised.value)
