"""One inference request end to end: route, decode and validate, batch, run, encode, count.

Kept out of the HTTP layer so that the V2 routes stay thin and tests can call it directly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shepherd.errors import InvalidInput, ShepherdError
from shepherd.serving import codec
from shepherd.serving.batcher import Pending
from shepherd.deploy.manager import DeploymentManager
from shepherd.serving.metrics import ServingMetrics

if TYPE_CHECKING:
    from shepherd.appliance import Appliance

ROUTE_ATTEMPTS = 3
VERSION = re.compile(r"[0-9]{1,18}")
_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A unique request id, 32 hex digits like a UUID's: 80 random bits per process, then a counter.

    A tenth of uuid4's cost on the request path; ids from different processes differ in the prefix.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


class RequestTimeout(ShepherdError):
    """The request was not answered within serving.request_timeout_ms."""

    status = 504
    code = "TIMEOUT"


class InferResult:
    __slots__ = ("body", "header_length", "version")

    def __init__(self, body: bytes, header_length: int | None, version: int) -> None:
        self.body = body
        self.header_length = header_length
        self.version = version


def _expire(pending: Pending, name: str, timeout: float) -> None:
    """Request timeout: drop it from the queue if it has not started, and answer 504.

    A request already answered is left alone: its timer can fire in the loop iteration that set
    the answer, before the loop's next callback logs the run (batcher._record_after_answer), and
    marking it dropped then would keep an answered request out of the prediction log.
    """
    if pending.future.done():
        return
    pending.dropped = True
    pending.future.set_exception(RequestTimeout(f"{name}: no answer within {timeout * 1000:.0f} ms"))


def check_batch_axis(inputs: dict) -> None:
    """Inputs of a batchable model must agree on the first (batch) dimension."""
    sizes = {name: a.shape[0] for name, a in inputs.items() if a.ndim}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{n}: {s}" for n, s in sizes.items())
        raise InvalidInput(f"inputs disagree on the batch dimension (first axis) ({listed})", field=next(iter(sizes)))


def parse_version(version: str | None) -> int | None:
    """V2 versions are numeric; '' or None means 'route by policy'."""
    if version is None or version == "":
        return None
    if not VERSION.fullmatch(version):
        raise InvalidInput(f"version = {version!r}: versions are numbers", field="version")
    return int(version)


def infer_for(appl: Appliance, name: str, version: str | None, body: bytes, header_length: int | str | None):
    """`infer` with the appliance's manager, metrics, prediction log and timeout (both HTTP entry points use this)."""
    return infer(
        appl.deployments, appl.metrics, name, version, body, header_length, appl.config.serving.request_timeout_ms / 1000,
        assign_ids=appl.predlog is not None, active_requests=appl.active_requests,
    )


async def infer(
    manager: DeploymentManager,
    metrics: ServingMetrics,
    name: str,
    version: str | None,
    body: bytes,
    header_length: int | str | None,
    timeout: float,
    assign_ids: bool = False,
    active_requests: Callable[[], int] | None = None,
) -> InferResult:
    """Serve one V2 infer request against deployment `name` (optionally a pinned version).

    With `assign_ids` (the prediction log is on), a request without an `id` gets a generated one
    (echoed in the response), so that ground truth can be sent for it later. The batcher logs the
    request (deployment.manager wires it to the log), with its latency up to when the model answered it.

    `active_requests` is the HTTP server's count of requests it has parsed and not answered (this
    one included). When it is 1 no other request can join this one's batch, so a model that runs
    inline does so without first yielding to the event loop.
    """
    started = time.perf_counter()
    pinned = parse_version(version)
    for _ in range(ROUTE_ATTEMPTS):
        slot, loaded = manager.route(name, pinned)
        if loaded.acquire():
            break
    else:  # pragma: no cover - only when swaps race this request three times
        raise ShepherdError(f"{name}: could not route the request; retry")
    labels = loaded.labels(name, slot)
    series = metrics.series(labels)
    series.in_flight += 1
    outcome = "failure"
    try:
        request = codec.decode_request(body, header_length, loaded.signature)
        if loaded.session.batchable and len(request.inputs) > 1:
            check_batch_axis(request.inputs)
        request_id = request.id
        if assign_ids and not request_id:
            request_id = new_request_id()
        outputs = None
        if loaded.batcher.inline_ok:
            # Let the requests whose bytes arrived in the same loop iteration start (and count
            # themselves in flight) before deciding: under load they batch, alone this one runs
            # inline. The server knows when there are none, which saves a loop iteration.
            if active_requests is None or active_requests() > 1:
                await asyncio.sleep(0)
            outputs = loaded.batcher.run_inline(request.inputs, labels, request_id, started)
        if outputs is None:
            pending: Pending = loaded.batcher.submit(request.inputs, labels, request_id, started)
            series.queue_depth = loaded.batcher.depth()
            # A timer instead of asyncio.wait_for(shield(...)): the same effect at a third of the cost.
            timer = asyncio.get_running_loop().call_later(timeout, _expire, pending, name, timeout)
            try:
                outputs = await pending.future
            finally:
                timer.cancel()
        out_body, out_header = codec.encode_response(
            model_name=name,
            model_version=str(loaded.version),
            request_id=request_id,
            outputs=outputs,
            requested=request.outputs,
            binary_default=request.binary_output_default,
        )
        outcome = "success"
        return InferResult(out_body, out_header, loaded.version)
    finally:
        elapsed = time.perf_counter() - started
        st = loaded.stats
        if outcome == "success":
            st.success_count += 1
            st.success_ns += int(elapsed * 1e9)
        else:
            st.fail_count += 1
            st.fail_ns += int(elapsed * 1e9)
        st.last_inference_ms = int(time.time() * 1000)
        loaded.release()
        series.in_flight -= 1
        series.request_done(outcome == "success", elapsed)
