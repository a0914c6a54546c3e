"""Triton python-backend model that runs an ONNX file with onnxruntime on the CPU.

The bundled CPU tritonserver has no onnxruntime backend, so the local launcher serves each
ONNX model through this file under the model's own name, inputs, outputs, max batch size and
dynamic batching. Production uses Triton's onnxruntime/tensorrt backends with the committed
config.pbtxt. This file runs inside Triton's python stub, not in the platform's processes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("IMAGING_ORT_THREADS", "2"))
        self._session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i["name"] for i in config["input"]]
        self._outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        # Dynamic batching hands us several requests: run them as one onnxruntime batch.
        feeds = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            for name in self._inputs
        }
        sizes = [len(a) for a in feeds[self._inputs[0]]]
        results = self._session.run(
            self._outputs, {name: np.concatenate(arrays) for name, arrays in feeds.items()}
        )
        responses = []
        offsets = np.cumsum([0, *sizes])
        for i in range(len(requests)):
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[offsets[i] : offsets[i + 1]]))
                for name, out in zip(self._outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
