"""Alerts on their way out (budget alerts, and the operational alerts of
``workers.accounting.monitoring``): always the log, a webhook and email when configured.

An alert matters most when something else is going wrong, so delivery never raises: a
channel that fails is retried, then reported per channel in the returned dict (which
``budget_alerts.deliveries`` and ``operational_alerts.deliveries`` keep) and logged.
Secrets stay out of every report: a webhook URL embeds its token, so it is named
"webhook", never shown; the SMTP password never leaves ``_Email``.
"""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Literal, Protocol
from urllib.parse import urlsplit

import httpx

from schemas import ConfigError

__all__ = ["Alert", "Alerter", "Notice"]

log = logging.getLogger(__name__)

#: Attempts per channel, and the first pause between them (doubled after each).
TRIES = 3
BACKOFF_S = 0.5
WEBHOOK_TIMEOUT_S = 5.0
SMTP_TIMEOUT_S = 10.0
_MAX_REASON = 160


@dataclass(frozen=True, slots=True)
class Alert:
    """One budget crossing one level in one period."""

    budget: str
    period_start: dt.datetime
    level: Literal["threshold", "exceeded"]
    spent_usd: float
    limit_usd: float
    message: str

    @property
    def subject(self) -> str:
        return f"budget {self.budget}: {self.level}"


class Notice(Protocol):
    """What a channel sends: a one-line subject and the message."""

    @property
    def subject(self) -> str:
        """What it is about, in a few words (an email's subject, after "[llmfleet] ")."""

    @property
    def message(self) -> str:
        """The whole message, one paragraph."""


class _Channel(Protocol):
    @property
    def name(self) -> str:
        """The channel's key in a delivery report."""

    def send(self, alert: Notice) -> None:
        """Deliver once; raise on failure."""

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a report."""


@dataclass(frozen=True, slots=True)
class _Webhook:
    """A Slack-compatible incoming webhook: POST ``{"text": ...}``."""

    url: str = field(repr=False)
    name: str = "webhook"

    def send(self, alert: Notice) -> None:
        with httpx.Client(timeout=WEBHOOK_TIMEOUT_S) as client:
            response = client.post(self.url, json={"text": alert.message})
        if not response.is_success:
            # httpx's own HTTPStatusError message would quote the URL.
            raise _WebhookRefused(f"webhook answered HTTP {response.status_code}")

    def secrets(self) -> tuple[str, ...]:
        parts = urlsplit(self.url)
        return tuple(s for s in (self.url, parts.path, parts.query) if len(s) > 1)


class _WebhookRefused(Exception):
    """The webhook answered, with a status other than 2xx."""


@dataclass(frozen=True, slots=True)
class _Email:
    """Plain SMTP, optionally upgraded with STARTTLS and authenticated."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    name: str = "email"

    def send(self, alert: Notice) -> None:
        message = EmailMessage()
        message["Subject"] = f"[llmfleet] {alert.subject}"
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(alert.message + "\n")
        with smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_S) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(message)

    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()


def _reason(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """``"<ExcClass>: <short message>"`` with every secret blanked out."""
    text = " ".join(str(exc).split())
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = text[:_MAX_REASON] or "no detail"
    return f"{type(exc).__name__}: {text}"


class Alerter:
    """Delivers alerts to the log and to the channels configured."""

    def __init__(self, channels: list[_Channel] | None = None, *, tries: int = TRIES,
                 backoff_s: float = BACKOFF_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._channels = {c.name: c for c in channels or []}
        self._tries = max(1, tries)
        self._backoff_s = backoff_s
        self._sleep = sleep

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, tries: int = TRIES,
                 backoff_s: float = BACKOFF_S) -> Alerter:
        """Channels from LLMFLEET_ALERT_WEBHOOK_URL and LLMFLEET_SMTP_*; a malformed
        value is a ConfigError naming the variable (never showing a secret)."""
        channels: list[_Channel] = []
        url = env.get("LLMFLEET_ALERT_WEBHOOK_URL", "").strip()
        if url:
            if not url.startswith(("http://", "https://")):
                raise ConfigError("LLMFLEET_ALERT_WEBHOOK_URL must be an http(s) URL",
                                  key="LLMFLEET_ALERT_WEBHOOK_URL")
            channels.append(_Webhook(url))
        email = _email_from_env(env)
        if email is not None:
            channels.append(email)
        return cls(channels, tries=tries, backoff_s=backoff_s)

    @property
    def channels(self) -> list[str]:
        return ["log", *self._channels]

    def deliver(self, alert: Notice) -> dict[str, str]:
        """Per channel: "sent", "failed: <ExcClass>: <message>" or "off". Never raises."""
        log.warning("alert (%s): %s", alert.subject, alert.message)
        outcome = {"log": "sent"}
        for name in ("webhook", "email"):
            channel = self._channels.get(name)
            outcome[name] = "off" if channel is None else self._attempt(channel, alert)
        return outcome

    def _attempt(self, channel: _Channel, alert: Notice) -> str:
        """Retry with a doubling pause; the last failure is the channel's report."""
        reason = "no attempt"
        for attempt in range(self._tries):
            if attempt:
                self._sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                channel.send(alert)
            except Exception as exc:  # any failure of a channel is reported, not raised
                reason = _reason(exc, channel.secrets())
                log.warning("alert (%s): %s attempt %d of %d failed: %s",
                            alert.subject, channel.name, attempt + 1, self._tries, reason)
            else:
                return "sent"
        log.error("alert (%s): %s gave up after %d attempts", alert.subject,
                  channel.name, self._tries)
        return f"failed: {reason}"


def _email_from_env(env: Mapping[str, str]) -> _Email | None:
    host = env.get("LLMFLEET_SMTP_HOST", "").strip()
    if not host:
        return None
    raw_port = env.get("LLMFLEET_SMTP_PORT", "").strip() or "25"
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise ConfigError(f"LLMFLEET_SMTP_PORT={raw_port!r}: expected a port number",
                          key="LLMFLEET_SMTP_PORT")
    recipients = tuple(a.strip() for a in env.get("LLMFLEET_SMTP_TO", "").split(",")
                       if a.strip())
    if not recipients:
        raise ConfigError("LLMFLEET_SMTP_HOST is set but LLMFLEET_SMTP_TO names no "
                          "recipient", key="LLMFLEET_SMTP_TO")
    starttls = env.get("LLMFLEET_SMTP_STARTTLS", "").strip().lower()
    if starttls not in ("", "true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ConfigError(f"LLMFLEET_SMTP_STARTTLS={starttls!r}: expected true or false",
                          key="LLMFLEET_SMTP_STARTTLS")
    return _Email(host=host, port=int(raw_port),
                  sender=env.get("LLMFLEET_SMTP_FROM", "").strip() or "llmfleet@localhost",
                  recipients=recipients, user=env.get("LLMFLEET_SMTP_USER") or None,
                  password=env.get("LLMFLEET_SMTP_PASSWORD") or None,
                  starttls=starttls in ("true", "1", "yes", "on"))
