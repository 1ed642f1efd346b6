"""Attention backends behind a small registry, chosen per module instance.

After diffusers' ``attention_dispatch.py``: a backend is a plain function
``fn(q, k, v, mask) -> out`` on ``[batch, heads, tokens, head_dim]`` tensors plus the
constraints it has (devices, dtypes, head size). Each :class:`Attention` module holds its
own backend, checked when it is set and on every call, so two models in one process can
use different backends. ``mask`` is boolean, ``True`` where a query may attend to a key,
broadcastable to ``[batch, heads, queries, keys]``; no row may be all ``False``.

Built in: ``"sdpa"`` (``torch.nn.functional.scaled_dot_product_attention``, picks fused
kernels where it can) and ``"math"`` (the reference: explicit softmax, exports to any ONNX
opset). Register others (e.g. a flash-attention wrapper) with :func:`register_backend`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.models.errors import ModelConfigError

AttentionFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]

_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})


@dataclass(frozen=True, slots=True)
class AttentionBackend:
    """One way to compute attention and what it can run on.

    Attributes:
        name: registry name.
        fn: ``fn(q, k, v, mask)`` on ``[B, H, N, D]`` tensors, mask as in the module doc.
        devices: device types it runs on ("cpu", "cuda", ...).
        dtypes: tensor dtypes it accepts.
        max_head_dim: the largest head size it supports; None for any.
        supports_mask: False if it cannot take an attention mask.
    """

    name: str
    fn: AttentionFn
    devices: frozenset[str] = frozenset({"cpu", "cuda", "mps"})
    dtypes: frozenset[torch.dtype] = _FLOATS
    max_head_dim: int | None = None
    supports_mask: bool = True

    def check(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
        """Raise :class:`ModelConfigError` naming every constraint these inputs break.

        Call this before :attr:`fn`; the caller picks another backend if it raises.
        """
        problems = []
        if q.device.type not in self.devices:
            problems.append(f"device {q.device.type} (runs on {', '.join(sorted(self.devices))})")
        if q.dtype not in self.dtypes:
            problems.append(f"dtype {q.dtype}")
        if self.max_head_dim is not None and q.shape[-1] > self.max_head_dim:
            problems.append(f"head size {q.shape[-1]} > {self.max_head_dim}")
        if mask is not None and not self.supports_mask:
            problems.append("an attention mask")
        if mask is not None and mask.dtype != torch.bool:
            problems.append(f"mask dtype {mask.dtype} (must be torch.bool)")
        if not (q.dtype == k.dtype == v.dtype):
            problems.append(f"mixed dtypes q={q.dtype} k={k.dtype} v={v.dtype}")
        if problems:
            raise ModelConfigError(
                f"attention backend {self.name!r} cannot take " + "; ".join(problems)
            )


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.float().softmax(dim=-1).to(q.dtype) @ v


_REGISTRY: dict[str, AttentionBackend] = {}


def register_backend(backend: AttentionBackend) -> None:
    """Make ``backend`` selectable by name; registering a name again replaces it."""
    _REGISTRY[backend.name] = backend


def get_backend(name: str) -> AttentionBackend:
    """The backend registered as ``name``.

    Raises:
        ModelConfigError: no such backend; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelConfigError(f"unknown attention backend {name!r}; known: {known}") from None


def available_backends() -> tuple[str, ...]:
    """Names of the registered backends."""
    return tuple(sorted(_REGISTRY))


register_backend(AttentionBackend("sdpa", _sdpa))
register_backend(AttentionBackend("math", _math))


class Attention(nn.Module):
    """Multi-head attention (self- or cross-) whose kernel comes from the registry.

    Args:
        dim: width of the queries (and of the output).
        heads: attention heads; must divide ``dim``.
        kv_dim: width of the keys/values source; ``dim`` when None (self-attention).
        backend: registry name; change it later with :meth:`set_backend` or
            :func:`set_attention_backend`.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, backend: str = "sdpa"):
        super().__init__()
        if dim % heads:
            raise ModelConfigError(f"Attention: heads ({heads}) must divide dim ({dim})")
        self.heads = heads
        self.head_dim = dim // heads
        kv_dim = dim if kv_dim is None else kv_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.backend = get_backend(backend)

    def set_backend(self, name: str) -> None:
        """Use the backend registered as ``name`` from the next call on."""
        self.backend = get_backend(name)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None):
        """Attend from ``x`` [B, N, dim] to ``context`` [B, M, kv_dim] (``x`` itself if None).

        Returns:
            [B, N, dim].
        """
        src = x if context is None else context
        b, n, _ = x.shape
        m = src.shape[1]
        q = self.to_q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(src).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(src).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)
        self.backend.check(q, k, v, mask)
        out = self.backend.fn(q, k, v, mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def set_attention_backend(module: nn.Module, name: str) -> int:
    """Switch every :class:`Attention` inside ``module`` to backend ``name``.

    Returns:
        How many attention layers were switched (0 means the module has none).

    Raises:
        ModelConfigError: unknown backend name.
    """
    backend = get_backend(name)
    count = 0
    for sub in module.modules():
        if isinstance(sub, Attention):
            sub.backend = backend
            count += 1
    return count
