"""A model expert's card figures (resources and cost) derived from the size of its full-size
architecture, built on torch's meta device: no weights, no memory, a second or two.

`cost` is in the unit every card uses, estimated milliseconds per image, here on a reference
device: for GPU experts an H100-class GPU, for CPU experts two CPU cores. A forward pass is bound by
arithmetic (FLOPs counted by torch's FlopCounterMode over the image's real shapes); each generated
token is bound by reading every weight once (memory bandwidth). The constants below are assumptions,
stated once; the GPU smoke benchmark (benchmarks/scripts/gpu_smoke.py) measures the real figures."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from experts.base import Resources

DType = Literal["float32", "float16", "bfloat16"]
BYTES_PER_PARAMETER = {"float32": 4, "float16": 2, "bfloat16": 2}

GPU_MEMORY_GB = 80.0  # the fraction of a GPU an expert asks for is of an 80 GB card
GPU_SUSTAINED_TFLOPS = {"float32": 50.0, "float16": 400.0, "bfloat16": 400.0}  # ~40 % of H100 dense peak
GPU_BANDWIDTH_GB_S = 2000.0  # ~60 % of H100 HBM3
CPU_SUSTAINED_GFLOPS = 50.0  # two cores, float32
GPU_FRACTION_STEP = 0.05
CPU_ENOUGH_GFLOPS = 5.0  # below this per image, a GPU does not pay for its transfer and scheduling
WORKSPACE_GB = 1.0  # activations, CUDA context share, allocator slack
WEIGHT_OVERHEAD = 1.2


class Footprint(BaseModel):
    """How big one expert is: parameters, the FLOPs of one image's forward pass (prompt and image
    for a vision-language model), and how many tokens it generates per image."""

    model_config = ConfigDict(extra="forbid")
    parameters: int
    forward_gflops: float
    generated_tokens: int = 0
    dtype: DType


def count_parameters_and_flops(build: Callable, forward: Callable) -> tuple[int, float]:
    """Parameters of `build()` and GFLOPs of `forward(model)`, both on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward(model)
    return parameters, counter.get_total_flops() / 1e9


class CardFigures(BaseModel):
    cost: float
    resources: Resources


def card_figures(footprint: Footprint) -> CardFigures:
    weights_gb = footprint.parameters * BYTES_PER_PARAMETER[footprint.dtype] / 1e9
    memory_gb = weights_gb * WEIGHT_OVERHEAD + WORKSPACE_GB
    if footprint.forward_gflops < CPU_ENOUGH_GFLOPS and footprint.generated_tokens == 0:
        cost_ms = footprint.forward_gflops / CPU_SUSTAINED_GFLOPS * 1000.0
        num_gpus = 0.0
    else:
        cost_ms = footprint.forward_gflops / GPU_SUSTAINED_TFLOPS[footprint.dtype]
        cost_ms += footprint.generated_tokens * weights_gb / GPU_BANDWIDTH_GB_S * 1000.0
        num_gpus = math.ceil(memory_gb / GPU_MEMORY_GB / GPU_FRACTION_STEP) * GPU_FRACTION_STEP
    return CardFigures(
        cost=round(cost_ms, 1),
        resources=Resources(num_cpus=1.0, num_gpus=round(num_gpus, 2), memory_mb=int(math.ceil(memory_gb * 1024))),
    )
