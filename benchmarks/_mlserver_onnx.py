"""A minimal MLServer custom runtime that serves one ONNX model with ONNX Runtime.

MLServer has no maintained ONNX runtime, so `benchmarks/serving.py` gives it this one: it is
imported by MLServer (in MLServer's own virtual environment, not Shepherd's) through
`"implementation": "_mlserver_onnx.OnnxRuntimeModel"` in model-settings.json, with this folder
on PYTHONPATH. The model path is `parameters.uri`.

It is deliberately as lean as MLServer allows, so the comparison is fair to MLServer: the
session has the same options as Shepherd's (ORT_ENABLE_ALL, ONNX Runtime's default thread
counts), the request is decoded with MLServer's own NumpyRequestCodec (first input as a numpy
array), `session.run` is called directly on the event loop (a single row takes microseconds,
so a thread hop would only add cost), and every output is encoded with NumpyCodec.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        feed = {self._input: np.zeros([1, *self._session.get_inputs()[0].shape[1:]], dtype=np.float32)}
        for _ in range(3):  # warm up, as Shepherd does before a version takes traffic
            self._session.run(self._outputs, feed)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self.decode_request(payload, default_codec=NumpyRequestCodec)
        results = self._session.run(self._outputs, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, arr) for name, arr in zip(self._outputs, results)],
        )
