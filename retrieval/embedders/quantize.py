"""int8 models for the CPU forward (the precision "int8" of retrieval/embedders/precision.py).

int8 is torch's dynamic quantization of every `nn.Linear` (weights int8 once, activations quantised per
batch, fbgemm/oneDNN kernels). It covers CLIP's MLPs by itself but not its attention:
`nn.MultiheadAttention` keeps its input projection as a bare parameter and its output projection as a
`NonDynamicallyQuantizableLinear`, so each self-attention is first rewritten as `SelfAttention` (the same
arithmetic with two `nn.Linear`) and then quantised with the rest. Convolutions have no dynamic int8 kernels,
so a ResNet keeps its fp32 convolutions under int8 (only its Linear layers, none once `fc` is dropped, would
change; static int8 through FX graph mode was measured and not kept: BENCHMARKS.md, "Ingest throughput").

The quantised model is built once per process for each embedder id (`quantized`), and how long that took
is kept (`Embedder.quantize_seconds`) for the benchmark to report.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch.nn import functional as F

_CACHE: dict[str, tuple[torch.nn.Module, float]] = {}
_CACHE_LOCK = threading.Lock()


def quantized(
    key: str, model: torch.nn.Module, build: Callable[[torch.nn.Module], torch.nn.Module]
) -> tuple[torch.nn.Module, float]:
    """`build(model)` (on a copy), made once per process for `key` (an embedder id); also the seconds the
    first build took."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            started = time.perf_counter()
            built = build(copy.deepcopy(model))
            _CACHE[key] = (built, time.perf_counter() - started)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget every quantised model built so far (the next embedder builds its own again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Every self-attention rewritten with `nn.Linear` projections, then every `nn.Linear` int8."""
    from torch.ao.quantization import quantize_dynamic

    swap_self_attention(model)
    with warnings.catch_warnings():
        # torch.ao.quantization says it moves to torchao; torchao's CPU int8 path needs torch.compile.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        model = cast(torch.nn.Module, quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8))
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            # open_clip reads a block's compute dtype from its first Linear's weight, which is a method
            # here; this attribute (its hook for int8 layers) answers instead.
            setattr(module, "int8_original_dtype", torch.float32)  # noqa: B010 - a torch Module attribute
    return model


def swap_self_attention(model: torch.nn.Module) -> int:
    """Replace each batch-first `nn.MultiheadAttention` used as self-attention (packed projections, no extra
    biases) by an equal `SelfAttention`; returns how many were replaced. Cross-attention (open_clip's
    attentional pooler, a block with a key/value norm) is left as it is."""
    count = 0
    for parent in list(model.modules()):
        if hasattr(parent, "ln_1_kv") or type(parent).__name__ == "AttentionalPooler":
            continue
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, torch.nn.MultiheadAttention)
                and child.batch_first
                and child._qkv_same_embed_dim
                and child.in_proj_bias is not None
                and child.bias_k is None
                and not child.add_zero_attn
            ):
                setattr(parent, name, SelfAttention.from_multihead(child))
                count += 1
    return count


class SelfAttention(torch.nn.Module):
    """`nn.MultiheadAttention(query, query, query)` with its projections as `nn.Linear` layers, which
    dynamic quantisation reaches. Called as the original is (key and value are the query; no weights out)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = torch.nn.Linear(dim, 3 * dim)
        self.out_proj = torch.nn.Linear(dim, dim)

    @classmethod
    def from_multihead(cls, attention: torch.nn.MultiheadAttention) -> SelfAttention:
        module = cls(attention.embed_dim, attention.num_heads)
        with torch.no_grad():
            module.in_proj.weight.copy_(attention.in_proj_weight)
            module.in_proj.bias.copy_(cast(torch.Tensor, attention.in_proj_bias))
            module.out_proj.weight.copy_(attention.out_proj.weight)
            module.out_proj.bias.copy_(attention.out_proj.bias)
        return module.to(attention.in_proj_weight.device)

    def forward(
        self, query: torch.Tensor, *_kv: Any, attn_mask: torch.Tensor | None = None, **_kw: Any
    ) -> tuple[torch.Tensor, None]:
        if any(other is not query for other in _kv[:2]):
            raise ValueError("SelfAttention attends a sequence to itself; key and value must be the query")
        batch, length, dim = query.shape
        qkv = self.in_proj(query).view(batch, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # MultiheadAttention: True masks a position out; SDPA: True keeps it
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim)), None


__all__ = ["SelfAttention", "clear_cache", "dynamic_int8", "quantized", "swap_self_attention"]
