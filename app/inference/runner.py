"""One session run on a batch, fetching only the output asked for.

With `bind_on` set ("cuda" on the CUDA provider) the run goes through onnxruntime's IO
binding: the input is bound from host memory, only the asked-for output is bound, on
that device, and copied to the host once at the end. Without it a plain `run` is used
(on the CPU provider that already works in place). `bench/benchmark.py --device cuda`
measures both (its `io_binding` section).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


class SessionRunner:
    def __init__(self, session: ort.InferenceSession, input_name: str, bind_on: str | None) -> None:
        self.session = session
        self.input_name = input_name
        self.bind_on = bind_on

    def __call__(self, output: str, x: np.ndarray) -> np.ndarray:
        if self.bind_on is None:
            (out,) = self.session.run([output], {self.input_name: x})
            return np.asarray(out)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(x))
        binding.bind_output(output, self.bind_on)
        self.session.run_with_iobinding(binding)
        result: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return result
