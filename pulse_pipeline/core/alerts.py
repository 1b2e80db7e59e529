"""Alerts a person should see: run failures and live-accuracy drops.

Always logged by the caller; when `PULSE_ALERT_WEBHOOK` is set, also posted as one JSON message to
that incoming webhook. The body is Slack's (`text`, plus `blocks` for the layout), which Mattermost,
Rocket.Chat, Discord's /slack endpoint and most chat tools accept too; the structured fields ride
along under `pulse` for anything that wants to route on them. A webhook that cannot be reached never
fails the sensor that raised the alert: `send_alert` returns what happened as one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

WEBHOOK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Alert:
    title: str  # one line: what happened, e.g. "retrain_intent_router failed"
    text: str  # what a person should know or do next
    kind: str  # "run_failure", "production_accuracy", ...
    family: str | None = None
    link: str | None = None  # the run or asset in the Dagster UI, when known
    fields: dict[str, Any] = field(default_factory=dict)

    def to_message(self) -> dict[str, Any]:
        """The webhook body (Slack-compatible)."""
        body = f"*{self.title}*\n{self.text}"
        if self.link:
            body += f"\n<{self.link}|Open in Dagster>"
        return {
            "text": f"{self.title}: {self.text}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body}}],
            "pulse": {"kind": self.kind, "family": self.family, "title": self.title, **self.fields},
        }


def webhook_url() -> str | None:
    from pulse_pipeline.settings import get_settings

    return get_settings().pulse_alert_webhook.get_secret_value() or None


def send_alert(alert: Alert, url: str | None = None) -> str:
    """Post `alert` to `url` (default: PULSE_ALERT_WEBHOOK); return one line saying what happened."""
    url = url if url is not None else webhook_url()
    if not url:
        return "not posted: PULSE_ALERT_WEBHOOK is not set"
    try:
        response = httpx.post(url, json=alert.to_message(), timeout=WEBHOOK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"not posted: {type(exc).__name__}: {exc}"
    if response.status_code >= 300:
        return f"not posted: the webhook answered HTTP {response.status_code}: {response.text[:200]}"
    return "posted"
