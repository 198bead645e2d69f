"""Weight formats for the native backend's packed inference path (``NativeModel.pack``).

A format decides how a linear layer's weight is stored and multiplied; activations, norms,
attention and the cache stay in the model's dtype (float32 unless loaded otherwise).

- ``native`` (the default, not a name users pick): the weights as they are, in the model's dtype
  (``F.linear``). Exact.
- ``fp16-weights``: weights stored in float16, multiplied by float32 activations with float32
  accumulation (fbgemm's fp16 GEMM, which widens each weight on the fly with F16C). Exact
  whenever the weights are float16 values already, as the built-in models' are (they ship in
  float16); otherwise each weight is rounded to float16 once and ``pack`` says it is lossy.
- ``int8-weights``: weight-only int8 with one scale per output channel (gpt-fast's int8
  scheme), multiplied by ``aten._weight_int8pack_mm``, whose CPU kernel is fast only for
  bfloat16 activations: the matmul input is rounded to bfloat16 and its output read back in
  float32. Lossy, never a default, and named so in ``Generation.stats.extra`` and the bench.

Measured on a 2-core Xeon (AVX-512, no AVX512-FP16/BF16, no AMX), one thread, one token
(microbenchmarks, a loaded machine): a 4096x384 projection takes ~220 us in float32, ~125 us
with fp16 weights and ~113 us with int8 weights; a 384x384 one ~12 / ~24 / ~19 us, so the
half-width formats pay only on the larger matrices, which is why fused projections matter.
fp16 x fp16 ``F.linear`` (~2x slower than float32) and ``_weight_int8pack_mm`` with float32
activations (~7x slower) have no fast kernel here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# The formats users pick -> True where it computes what float32 computes (given float16-valued weights).
WEIGHT_FORMATS = {"fp16-weights": True, "int8-weights": False}

Linear = Callable[[torch.Tensor], torch.Tensor]


def fp16_exact(weight: torch.Tensor) -> bool:
    """Whether rounding ``weight`` to float16 leaves it unchanged (no value lost, none overflowing)."""
    return bool(torch.equal(weight.to(torch.float16).to(weight.dtype), weight))


def int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight [N, K], float scale [N]): symmetric, one scale per output row, round to nearest."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, fmt: str) -> Linear:
    """A function x [..., K] -> x @ weight.T + bias [..., N] computed in format ``fmt`` ('native' or a
    key of WEIGHT_FORMATS). 'native' keeps ``weight`` itself (no copy: it sees in-place edits)."""
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if fmt == "native":
        return lambda x: F.linear(x, weight, bias)
    if weight.dtype != torch.float32:
        raise ValueError(f"weight format '{fmt}' multiplies float32 activations: load the model in float32")
    if fmt == "fp16-weights":
        # The packed operand holds the weight in float16 (fbgemm's own layout); bias stays float32.
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise ValueError("fp16-weights runs on fbgemm's fp16 GEMM, which this torch build lacks (x86 builds have it)")
        packed = torch.ops.quantized.linear_prepack_fp16(weight.contiguous(), bias)
        return lambda x: torch.ops.quantized.linear_dynamic_fp16(x, packed)
    if fmt == "int8-weights":
        q, scale = int8_per_channel(weight)
        scale = scale.to(torch.bfloat16)
        n = weight.shape[0]

        def int8_linear(x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), q, scale)
            y = y.to(x.dtype).view(*x.shape[:-1], n)
            return y if bias is None else y + bias

        return int8_linear
    raise ValueError(f"unknown weight format '{fmt}': choose one of {', '.join(WEIGHT_FORMATS)}")
