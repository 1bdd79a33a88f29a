"""MLflow's REST API (2.0), spoken over the product's outbound-request guard (jobs.common.outbound).

The MLflow client library is not used: a user's tracking URI is user input, so every request goes through
`outbound_connection` (public addresses only, unless an administrator allows a host; the connection goes to
the address that was checked). Errors carry a category a user may see ("connection refused", "HTTP 503",
"refused: private address"), never an exception's text.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from jobs.common.outbound import OutboundError, OutboundPolicy, failure_category, outbound_connection

log = logging.getLogger(__name__)

ANSWER_MAX_BYTES = 1024 * 1024
BATCH_METRICS = 1000  # runs/log-batch takes at most 1000 metrics, 100 params, 1000 items in all
BATCH_PARAMS = 100
PARAM_VALUE_MAX = 6000
ARTIFACTS_SCHEME = "mlflow-artifacts:"


class TrackerError(Exception):
    """A request to the tracking server failed; the message is a category a user may see."""


class MlflowClient:
    """The few calls a job's logging needs, against `base_uri` (the server's root, e.g. http://host:5000)."""

    def __init__(self, base_uri: str, *, token: str = "", timeout_s: float, policy: OutboundPolicy):
        self.base_uri = base_uri.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.policy = policy

    def request(
        self, method: str, path: str, *, body: bytes | BinaryIO | None = None, content_type: str = "", length: int = 0
    ) -> Any:
        """One request; the answer's JSON (None when empty). TrackerError on any failure or non-2xx answer.
        A file `body` is streamed, `length` bytes."""
        url = self.base_uri + path
        headers = {"User-Agent": "LoRA-Studio-Tracking/1"}
        if length:
            headers["Content-Length"] = str(length)
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn, target = outbound_connection(url, timeout=self.timeout_s, policy=self.policy)
        except OutboundError as exc:
            log.warning("MLflow request to %s not sent: %s (%s)", url, exc.category, exc.detail)
            raise TrackerError(exc.category) from None
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read(ANSWER_MAX_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            category = failure_category(exc)
            log.warning("MLflow %s %s failed: %s (%s: %s)", method, url, category, type(exc).__name__, exc)
            raise TrackerError(category) from None
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise TrackerError(f"HTTP {response.status}{_error_code(answer)}")
        try:
            return json.loads(answer) if answer.strip() else None
        except ValueError:
            raise TrackerError("invalid answer (not JSON)") from None

    def call(self, method: str, endpoint: str, payload: dict[str, Any] | None = None, **query: str) -> Any:
        path = f"/api/2.0/mlflow/{endpoint}" + (f"?{urlencode(query)}" if query else "")
        body = json.dumps(payload).encode() if payload is not None else None
        return self.request(method, path, body=body, content_type="application/json" if body else "")

    def experiment_id(self, name: str) -> str:
        """The id of the experiment called `name`, created when missing."""
        try:
            return str(self.call("GET", "experiments/get-by-name", experiment_name=name)["experiment"]["experiment_id"])
        except TrackerError as exc:
            if not str(exc).startswith("HTTP 404"):
                raise
        return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])

    def run_create(self, experiment_id: str, *, run_name: str, start_ms: int, tags: dict[str, str]) -> dict:
        payload = {
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        return self.call("POST", "runs/create", payload)["run"]["info"]

    def run_info(self, run_id: str) -> dict:
        return self.call("GET", "runs/get", run_id=run_id)["run"]["info"]

    def params_log(self, run_id: str, params: dict[str, str]) -> None:
        items = [{"key": k, "value": v[:PARAM_VALUE_MAX]} for k, v in params.items()]
        for i in range(0, len(items), BATCH_PARAMS):
            self.call("POST", "runs/log-batch", {"run_id": run_id, "params": items[i : i + BATCH_PARAMS]})

    def metrics_log(self, run_id: str, metrics: list[dict[str, Any]]) -> None:
        """`metrics`: {"key", "value", "timestamp" (ms), "step"} each, sent 1000 at a time."""
        for i in range(0, len(metrics), BATCH_METRICS):
            self.call("POST", "runs/log-batch", {"run_id": run_id, "metrics": metrics[i : i + BATCH_METRICS]})

    def tags_set(self, run_id: str, tags: dict[str, str]) -> None:
        self.call(
            "POST", "runs/log-batch", {"run_id": run_id, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        )

    def run_end(self, run_id: str, status: str, end_ms: int | None = None) -> None:
        end_ms = end_ms or int(time.time() * 1000)
        self.call("POST", "runs/update", {"run_id": run_id, "status": status, "end_time": end_ms})

    def artifact_put(self, artifact_uri: str, name: str, path: Path) -> None:
        """Upload a file through the server's artifact proxy (`mlflow server` serving artifacts, the default)."""
        if not artifact_uri.startswith(ARTIFACTS_SCHEME):
            raise TrackerError("the server does not proxy artifacts (start it with --serve-artifacts)")
        folder = artifact_uri[len(ARTIFACTS_SCHEME) :].lstrip("/")
        target = f"/api/2.0/mlflow-artifacts/artifacts/{quote(folder)}/{quote(name)}"
        with path.open("rb") as body:
            self.request("PUT", target, body=body, content_type="application/octet-stream", length=path.stat().st_size)


def _error_code(answer: bytes) -> str:
    """MLflow's error code from an error answer (`: RESOURCE_DOES_NOT_EXIST`), or nothing."""
    try:
        code = json.loads(answer).get("error_code", "")
    except (ValueError, AttributeError):
        return ""
    return f": {code}" if isinstance(code, str) and code.isupper() and len(code) < 60 else ""
