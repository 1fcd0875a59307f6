"""POST /api/v1/bundles: stream a bundle to disk, then verify and import it off the event loop."""

from __future__ import annotations

import anyio
import msgspec
from litestar import Request, Response, post

from shepherd.api.security import OPERATOR, actor
from shepherd.appliance import Appliance
from shepherd.errors import Busy, InvalidInput, PayloadTooLarge
from shepherd.store.registry import VersionRecord

FLUSH = 1024 * 1024


class ImportResult(msgspec.Struct, kw_only=True):
    created: bool
    """False when an identical bundle had already been imported (idempotent re-import)."""
    version: VersionRecord


@post("/api/v1/bundles", opt=OPERATOR, request_max_body_size=None, tags=["registry"])
async def import_bundle(request: Request) -> Response[ImportResult]:
    """Import a bundle sent as the raw request body (application/x-tar). 201 when a new version is registered, 200 when it already was."""
    app: Appliance = request.app.state.appliance
    limit = app.importer.limits.max_bundle_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"bundle is {declared} bytes; the limit (bundles.max_bundle_bytes) is {limit}", field="bundle")
    limiter = app.importer.limiter
    if limiter.available_tokens < 1:
        raise Busy(f"{limiter.total_tokens:g} bundle imports are already in progress; retry later", field="bundle")
    path = app.importer.new_upload_path()
    f = await anyio.to_thread.run_sync(open, path, "wb")
    try:
        total, buf = 0, bytearray()
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"bundle exceeds the limit (bundles.max_bundle_bytes) of {limit} bytes", field="bundle")
            buf += chunk
            if len(buf) >= FLUSH:
                await anyio.to_thread.run_sync(f.write, bytes(buf))
                buf.clear()
        if buf:
            await anyio.to_thread.run_sync(f.write, bytes(buf))
        await anyio.to_thread.run_sync(f.close)
        if total == 0:
            raise InvalidInput("empty request body: send the bundle file as the body", field="bundle")
        who = actor(request)
        record, created = await anyio.to_thread.run_sync(lambda: app.importer.import_file(path, actor=who), limiter=limiter)
    finally:
        f.close()
        path.unlink(missing_ok=True)
    return Response(ImportResult(created=created, version=record), status_code=201 if created else 200)
