"""The admin API from the command line (`scopegate pat ... --url`): a small JSON client over urllib, so the CLI
works against a running scopegate as well as on the registry file. Errors become ClientError with one line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

TIMEOUT = 15.0


class ClientError(Exception):
    pass


class AdminClient:
    def __init__(self, url: str, key: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientError(f"--url: expected http(s)://host[:port] of a running scopegate, got {url[:80]!r}")
        self.base = f"{parts.scheme}://{parts.netloc}/admin/api"
        if not key:
            raise ClientError("no admin key: put one in the variable named by --key-env (default SCOPEGATE_ADMIN_KEY)")
        self.key = key

    def call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        url = self.base + path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.key}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                said = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                said = ""
            raise ClientError(f"{exc.code}: {said or exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach {self.base} ({reason})") from None

    def credentials(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/credentials").get("credentials", []))

    def create(self, **fields: Any) -> dict[str, Any]:
        return dict(self.call("POST", "/credentials", {k: v for k, v in fields.items() if v is not None}))

    def rotate(self, cred_id: str, grace: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/credentials/{cred_id}/rotate", {"grace": grace}))

    def revoke(self, cred_id: str, dry_run: bool = False) -> dict[str, Any]:
        return dict(self.call("POST", f"/credentials/{cred_id}/revoke", {"dry_run": dry_run}))
