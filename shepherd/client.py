"""A small HTTP client for the CLI: base URL and token from flags or environment, errors as ShepherdError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from shepherd.errors import ShepherdError

DEFAULT_URL = "http://127.0.0.1:8080"


class RemoteError(ShepherdError):
    """The server answered with an error; `status` and `message` come from its response."""

    def __init__(self, status: int, message: str, code: str = "", field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.code = code or "HTTP_ERROR"


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        if token and not (token.strip().isascii() and token.strip().isprintable()):
            raise ShepherdError("--token (SHEPHERD_TOKEN): a token is printable ASCII; this one is not")
        headers = {"Authorization": f"Bearer {token.strip()}"} if token else {}
        self.url = url.rstrip("/")
        try:
            parsed = httpx.URL(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise httpx.InvalidURL("expected http(s)://HOST[:PORT]")
            self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        except httpx.InvalidURL as err:
            raise ShepherdError(f"--url (SHEPHERD_URL) {url!r}: not a server URL ({err})") from None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.ConnectError:
            raise ShepherdError(f"cannot reach Shepherd at {self.url}: is it running? (set --url or SHEPHERD_URL)") from None
        except httpx.HTTPError as err:
            raise ShepherdError(f"request to {self.url}{path} failed: {err}") from None
        if resp.status_code >= 400:
            raise _remote_error(resp)
        if resp.headers.get("content-type", "").startswith("application/json"):
            try:
                return resp.json()
            except ValueError:
                raise ShepherdError(f"{self.url}{path} answered with JSON that does not parse: is --url a Shepherd server?") from None
        return resp.text

    def download(self, path: str, dest: Path, media_type: str, what: str, **kw: Any) -> dict[str, str]:
        """Stream a GET response of `media_type` (`what`, for the error) into `dest`, written to a temp
        file and renamed when complete; returns the headers. Another type (a proxy's page, a server
        that is not Shepherd) is refused before anything is written."""
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self.http.stream("GET", path, **kw) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _remote_error(resp)
                got = resp.headers.get("content-type", "").split(";")[0].strip()
                if got != media_type:
                    raise ShepherdError(f"{self.url} answered {path} with {got or 'no content type'}, not {what}: is it Shepherd?")
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_bytes(1024 * 1024):
                        f.write(chunk)
                headers = dict(resp.headers)
            tmp.replace(dest)
        except httpx.ConnectError:
            raise ShepherdError(f"cannot reach Shepherd at {self.url}: is it running? (set --url or SHEPHERD_URL)") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return headers

    def upload(self, path: str, file: Path) -> Any:
        def chunks() -> Iterator[bytes]:
            with open(file, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    yield chunk

        headers = {"Content-Type": "application/x-tar", "Content-Length": str(file.stat().st_size)}
        return self.request("POST", path, content=chunks(), headers=headers)


def _remote_error(resp: httpx.Response) -> RemoteError:
    """The error a server answered with: Shepherd's JSON `error` (or MLflow's `message`) and the `field` it names,
    else the start of the body."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error") or body.get("message"), str):
        message, field = body.get("error") or body.get("message"), body.get("field")
        field = field if isinstance(field, str) and field else None
        if field and field not in message:  # the field to blame first: which of a batch's thousands of labels
            message = f"{field}: {message}"
        return RemoteError(resp.status_code, message, str(body.get("code", "")), field=field)
    text = " ".join((resp.text or resp.reason_phrase).split())
    return RemoteError(resp.status_code, f"HTTP {resp.status_code} {resp.reason_phrase}: {text[:200]}" if text else f"HTTP {resp.status_code}")
