"""ONNX Runtime sessions: providers from config (kept only when available), thread settings, warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog

from shepherd.config import Config, intra_op_threads
from shepherd.errors import ShepherdError

log = structlog.get_logger()

ModelRunner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""Runs a loaded version's model: inputs by name -> outputs by name (`ModelSession.run_named`)."""

V2_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


class LoadError(ShepherdError):
    """A model version could not be loaded or warmed; nothing was changed."""

    status = 422
    code = "MODEL_LOAD_FAILED"


def available_providers(preferred: list[str]) -> list[str]:
    """The configured providers this ONNX Runtime build actually has, in the configured order."""
    have = set(ort.get_available_providers())
    return [p for p in preferred if p in have]


def _provider_options(cfg: Config, provider: str) -> dict[str, Any]:
    if provider == "TensorrtExecutionProvider":
        cache = cfg.trt_cache_dir
        cache.mkdir(parents=True, exist_ok=True)
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": cfg.serving.trt_fp16,
            "trt_max_workspace_size": cfg.serving.trt_workspace_bytes,
        }
    return {}


def synthetic_inputs(signature: dict[str, Any], batch: int = 1) -> dict[str, np.ndarray]:
    """A batch built from the signature: -1 dimensions become `batch` (first) or 1 (others)."""
    out = {}
    for spec in signature["inputs"]:
        shape = [(batch if i == 0 else 1) if d == -1 else d for i, d in enumerate(spec["shape"])]
        dtype = V2_NUMPY[spec["datatype"]]
        out[spec["name"]] = np.full(shape, b"", dtype=object) if dtype is np.object_ else np.zeros(shape, dtype=dtype)
    return out


class ModelSession:
    """One ONNX Runtime session for one model version, warmed before it takes traffic."""

    def __init__(self, cfg: Config, model_path: Path, signature: dict[str, Any], *, label: str) -> None:
        self.signature = signature
        self.label = label
        providers = available_providers(list(cfg.serving.providers))
        if not providers:
            raise LoadError(
                f"{label}: none of serving.providers {cfg.serving.providers} is available "
                f"(this ONNX Runtime has {ort.get_available_providers()})"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads(cfg)
        opts.inter_op_num_threads = cfg.serving.inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        started = time.perf_counter()
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=[(p, _provider_options(cfg, p)) for p in providers]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            detail = str(err).replace(str(model_path), "<model.onnx>")
            raise LoadError(f"{label}: ONNX Runtime cannot load the model ({type(err).__name__}: {detail})") from None
        self.providers = self.session.get_providers()
        self.output_names = [o["name"] for o in signature["outputs"]]
        first_dims = [spec["shape"][0] if spec["shape"] else None for spec in signature["inputs"]]
        self.batchable = bool(first_dims) and all(d == -1 for d in first_dims)
        self.load_seconds = time.perf_counter() - started
        self.warm_seconds = float("inf")  # median single-run time, measured by warm_up
        self.warm_rows = 0
        log.info("session_created", model=label, providers=self.providers, requested=providers, intra_op_threads=opts.intra_op_num_threads,
                 seconds=round(self.load_seconds, 4))

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run the model; releases the GIL while ONNX Runtime computes."""
        return self.session.run(outputs or self.output_names, inputs)

    def run_named(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; every output, by name (the monitor profiles a version's outputs over its reference rows)."""
        return dict(zip(self.output_names, self.run(inputs)))

    def warm_up(self, example: dict[str, np.ndarray] | None = None, rounds: int = 3, timed: int = 9) -> None:
        """Run the input example (or a synthetic batch) a few times so the first request pays nothing.

        Then time it: `warm_seconds` is the median of `timed` more runs of that feed (`warm_rows`
        rows), skipped when a warm-up run already took over 1 ms (the figure only matters for tiny
        models; see Batcher.run_inline).
        """
        try:
            feed = example or synthetic_inputs(self.signature)
            first = next(iter(feed.values()))
            self.warm_rows = first.shape[0] if first.ndim else 1
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                self.run(feed)
                times.append(time.perf_counter() - t)
            if min(times) <= 1e-3:
                times = []
                for _ in range(timed):
                    t = time.perf_counter()
                    self.run(feed)
                    times.append(time.perf_counter() - t)
            self.warm_seconds = float(np.median(times))
        except Exception as err:
            raise LoadError(f"{self.label}: warm-up run failed ({type(err).__name__}: {err})") from None
