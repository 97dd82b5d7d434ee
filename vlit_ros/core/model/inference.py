"""
Running the per-frame model fast on one device.

`FrameRunner` turns (uint8 images, cached instruction features, odometry features, previous
actions) into action probabilities, values and grounding maps under `torch.inference_mode`:

- CPU: eager fp32.
- CUDA: bf16 autocast by default, optionally `torch.compile` of the frame path, optionally
  CUDA-graph replay: the whole frame is captured once per input shape (static input
  buffers, instruction features padded to `TextConfig.max_length` so the shape never
  changes) and replayed, which removes the per-kernel launch overhead that dominates at
  batch 1. Weights updated in place (`load_state_dict`) stay valid for captured graphs.
"""

from typing import Dict, Optional, Tuple

import torch

from vlit_ros.core.model.executor import VLITModel
from vlit_ros.core.model.text import TextFeatures

PRECISIONS = ('auto', 'fp32', 'bf16')
# Eager runs on a side stream before capture, as the CUDA-graph recipe asks (lazy
# initialisation and autotuning must not happen inside the capture).
_CAPTURE_WARMUP_RUNS = 3


class FrameRunner:
    """The per-frame model on its device: inputs -> probabilities, values, grounding maps."""

    def __init__(self, model: VLITModel, precision: str = 'auto', compile_model: bool = False,
                 cuda_graph: bool = False, zoom_map: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, '
                             f'got {precision!r}')
        self.model = model
        self.device = model.device
        on_cuda = self.device.type == 'cuda'
        if precision == 'auto':
            precision = 'bf16' if on_cuda else 'fp32'
        if precision == 'bf16' and not on_cuda:
            raise ValueError('bf16 autocast is used on CUDA devices only; use fp32 on '
                             f'{self.device.type}')
        if (compile_model or cuda_graph) and not on_cuda:
            raise ValueError(f'torch.compile and CUDA graphs are CUDA paths; the model is on '
                             f'{self.device.type}')
        self.precision = precision
        self.compiled = compile_model
        self.cuda_graph = cuda_graph
        # zoom_map: the grounding map merged with a 2x zoom of the image centre, as a model
        # trained with it (fusion.zoom_map) always does
        frame = model.zoomed_frame_forward if zoom_map else model.frame_forward
        self.zoom_map = zoom_map or model.vlm.fusion.zoom_map
        self._frame = torch.compile(frame, dynamic=False) if compile_model else frame
        self._graphs: Dict[Tuple, Tuple] = {}
        self._pool = None

    @property
    def text_length(self) -> Optional[int]:
        """Token count instruction features must be padded to (None: any)."""
        return self.model.config.text.max_length if self.cuda_graph else None

    def __call__(self, images: torch.Tensor, text: TextFeatures, odometry: torch.Tensor,
                 prev_action: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Return probabilities (B, NUM_ACTIONS), values (B,) and grounding maps (B, patches).

        All float32; the grounding maps are (B, 0) for a model without a grounding head.
        """
        with torch.inference_mode():
            if self.cuda_graph:
                return self._replay(images, text, odometry, prev_action)
            return self._run(images, text, odometry, prev_action)

    def _run(self, images, text, odometry, prev_action):
        # The autocast weight cache must be off under CUDA graphs: cached casts made during
        # capture would be freed while the graph still points at them.
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == 'bf16', cache_enabled=not self.cuda_graph):
            output, grounding = self._frame(images, text, odometry, prev_action)
        return torch.softmax(output.logits.float(), -1), output.value.float(), grounding.float()

    def _replay(self, images, text, odometry, prev_action):
        inputs = (images, text.tokens, text.mask, text.pooled, odometry, prev_action)
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        if key not in self._graphs:
            self._capture(key, inputs)
        graph, static_inputs, static_outputs = self._graphs[key]
        for static, value in zip(static_inputs, inputs):
            static.copy_(value)
        graph.replay()
        return tuple(output.clone() for output in static_outputs)

    def _capture(self, key, inputs) -> None:
        static_inputs = tuple(x.clone() for x in inputs)

        def frame():
            return self._run(static_inputs[0], TextFeatures(*static_inputs[1:4]),
                             static_inputs[4], static_inputs[5])

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(_CAPTURE_WARMUP_RUNS):
                frame()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_outputs = frame()
        # Graphs of other shapes share one memory pool.
        self._pool = graph.pool()
        self._graphs[key] = (graph, static_inputs, static_outputs)
