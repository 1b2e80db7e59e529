"""Review in a running Label Studio: the family's review queue out as tasks, the answers back in.

`LabelStudio` is a small client of Label Studio's REST API (httpx; the legacy API token,
`Authorization: Token ...`). `sync` does both directions for one family:

- **push**: a project per family (`pulse: <family>`, its labeling config generated from the
  family by `review.labeling_config`: the labels as choices, a text area for a note); the review
  queue's items not yet in the project are imported as tasks, in the queue's order (priority
  review first, lowest confidence first), each with the model's suggestion as a prediction with
  its score. A task carries its capture's annotation id (`data.pulse_annotation_id`), so a
  second push adds nothing that is there already.
- **pull**: the project's completed tasks are read back (`review.from_label_studio`) as
  `intent_label` records with the reviewer as `annotator` (`label-studio:<email>`) and the time
  they spent (`lead_time`, seconds), and ingested like any file (`source` names the project).
  Records are content-addressed, so a second pull stores nothing twice.

The capture service's `POST /v1/label-studio` takes Label Studio's webhook (ANNOTATION_CREATED,
ANNOTATION_UPDATED) for the same conversion without waiting for the next poll. The file-based
`pulse review export` / `import` stays for sites that cannot reach a server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.core.store import Store

PAGE_SIZE = 100


class LabelStudioUnavailable(RuntimeError):
    """The server did not answer as expected; the message names the request and the status."""


def project_title(family: FamilyConfig) -> str:
    return f"pulse: {family.name}"


class LabelStudio:
    """The REST calls `sync` needs, against one server."""

    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ):
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {token}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LabelStudioUnavailable(f"Label Studio at {self.url}: {method} {path}: {exc}") from None
        if r.status_code >= 400:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url}: {method} {path}: HTTP {r.status_code}: {r.text[:300]}"
            )
        return r.json() if r.content else None

    # -- projects -------------------------------------------------------------------------------

    def project(self, family: FamilyConfig) -> int:
        """The family's project id, made (or its labeling config brought up to date) as needed."""
        from pulse_pipeline.core.review import labeling_config

        title, config = project_title(family), labeling_config(family)
        found = next((p for p in self._projects() if p.get("title") == title), None)
        if found is None:
            made = self._call(
                "POST",
                "/api/projects",
                json={"title": title, "label_config": config, "description": family.description},
            )
            return int(made["id"])
        if found.get("label_config") != config:  # the family's labels changed
            self._call("PATCH", f"/api/projects/{found['id']}", json={"label_config": config})
        return int(found["id"])

    def _projects(self) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            body = self._call("GET", "/api/projects", params={"page": page, "page_size": PAGE_SIZE})
            results = body.get("results", []) if isinstance(body, dict) else body
            yield from results
            if not isinstance(body, dict) or not body.get("next"):
                return
            page += 1

    # -- tasks ----------------------------------------------------------------------------------

    def tasks(self, project: int) -> Iterator[dict[str, Any]]:
        """Every task of the project (data, and annotations when `fields=all`)."""
        page = 1
        while True:
            try:
                body = self._call(
                    "GET",
                    "/api/tasks",
                    params={"project": project, "page": page, "page_size": PAGE_SIZE, "fields": "all"},
                )
            except LabelStudioUnavailable as exc:
                if "HTTP 404" in str(exc):  # past the last page
                    return
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            if len(tasks) < PAGE_SIZE:
                return
            page += 1

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> int:
        if not tasks:
            return 0
        body = self._call("POST", f"/api/projects/{project}/import", content=orjson.dumps(tasks),
                          headers={"Content-Type": "application/json"})  # fmt: skip
        return int(body.get("task_count", len(tasks))) if isinstance(body, dict) else len(tasks)

    def users(self) -> dict[int, str]:
        """User id -> e-mail, to name reviewers (annotations name them by id)."""
        return {int(u["id"]): u.get("email") or str(u["id"]) for u in self._call("GET", "/api/users") or []}

    def completed(self, project: int) -> list[dict[str, Any]]:
        """The project's annotated tasks, with their annotations (Label Studio's JSON export)."""
        body = self._call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON"})
        return body if isinstance(body, list) else []

    def add_webhook(self, project: int, url: str, headers: dict[str, str]) -> int:
        """Have the server post created and updated annotations of the project to `url` (once)."""
        existing = self._call("GET", "/api/webhooks", params={"project": project}) or []
        for hook in existing:
            if hook.get("url") == url:
                return int(hook["id"])
        made = self._call(
            "POST",
            "/api/webhooks",
            json={
                "project": project,
                "url": url,
                "send_payload": True,
                "send_for_all_actions": False,
                "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
                "headers": headers,
                "is_active": True,
            },
        )
        return int(made["id"])


@dataclass(frozen=True)
class SyncResult:
    project: int
    pushed: int  # tasks imported now
    in_project: int  # queue items already there as tasks
    answered: int  # completed tasks read back
    stored: int  # annotation records stored from them now
    duplicates: int  # already stored by an earlier pull (or the webhook)
    quarantined: int
    unanswered: int  # exported tasks whose annotations held no choice (skipped, or a note only)

    def describe(self) -> str:
        return (
            f"pushed {self.pushed} task(s) ({self.in_project} already in project {self.project}); "
            f"{self.answered} answered: {self.stored} stored, {self.duplicates} already stored"
            + (f", {self.quarantined} quarantined" if self.quarantined else "")
        )


def sync(store: Store, config: PulseConfig, family: FamilyConfig, studio: LabelStudio) -> SyncResult:
    """Push the family's review queue to its project, pull the answers back (both idempotent)."""
    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.review import from_label_studio, review_queue, to_label_studio

    project = studio.project(family)
    queue = review_queue(store.annotations.iter_family(family.name), family)
    there = {str((t.get("data") or {}).get("pulse_annotation_id")) for t in studio.tasks(project)}
    tasks = to_label_studio(queue, family)
    new = [t for t in tasks if t["data"]["pulse_annotation_id"] not in there]
    pushed = studio.import_tasks(project, new)

    completed = studio.completed(project)
    records, unanswered = from_label_studio(completed, family, studio.users())
    result = ingest_lines(
        store,
        [orjson.dumps(r) for r in records],
        config,
        source=f"label-studio:{studio.url}/projects/{project}",
    )
    return SyncResult(
        project=project,
        pushed=pushed,
        in_project=len(tasks) - len(new),
        answered=len(records),
        stored=result.accepted,
        duplicates=result.duplicates,
        quarantined=result.quarantined,
        unanswered=unanswered,
    )
