"""Counter-based random numbers keyed by an image's pixels.

A sample's test-time views (con2.scoring) are drawn from a hash of (seed, view, role, its pixels),
so its score does not depend on the other images it is scored with. The same key over a sample
of an image's pixels is the "hash" of a run's training-data fingerprint (con2.run.data_fingerprint;
kept so that runs saved before its "pixels" key are still checked).
Integer maths only: equal on every device.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), in two 16-bit halves of c so nothing overflows."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (lowbias32): every input bit flips about half the output bits."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


_KEY_WEIGHTS: dict[tuple[int, str], torch.Tensor] = {}
# Pixels hashed per image: an evenly spaced subset keeps the key cheap at 224 px; two images that
# differ only elsewhere just share their random draws (harmless: each still gets valid views).
KEY_PIXELS = 4096


def image_keys(images: torch.Tensor, chunk_bytes: int = 64 * 2**20) -> torch.Tensor:
    """[N] int64 keys in [0, 2^32) from each uint8 image's pixels (and size).

    Two dot products of up to KEY_PIXELS pixel values with fixed pseudo-random 16-bit weights, in
    float64: every partial sum is an integer below 2^53, so the sums are exact in any summation
    order and equal on every device."""
    n = images.shape[0]
    flat = images.reshape(n, -1)
    length = flat.shape[1]
    step = -(-length // KEY_PIXELS)  # ceil: at most KEY_PIXELS samples
    picked = flat[:, ::step]
    w = _KEY_WEIGHTS.get((picked.shape[1], str(images.device)))
    if w is None:
        g = torch.Generator().manual_seed(0x5EED)
        w = torch.randint(1, 2**16, (picked.shape[1], 2), generator=g, dtype=torch.int64).double().to(images.device)
        _KEY_WEIGHTS.clear()  # one image size at a time is the common case; keep memory bounded
        _KEY_WEIGHTS[(picked.shape[1], str(images.device))] = w
    rows = max(1, chunk_bytes // max(1, 8 * picked.shape[1]))
    sums = torch.cat([picked[i: i + rows].double() @ w for i in range(0, n, rows)]).long()
    a, b = sums.unbind(1)
    x = _mix32((a ^ (a >> 32)) & _MASK32) ^ ((b ^ (b >> 32)) & _MASK32)
    return _mix32(x ^ (length & _MASK32))


def keyed_uniforms(keys: torch.Tensor, stream: int, columns: int) -> torch.Tensor:
    """[N, columns] float32 uniforms in [0, 1), a function of (key, stream, column) only."""
    h = _mix32(keys ^ (stream & _MASK32))
    col = torch.arange(columns, device=keys.device, dtype=torch.int64)
    bits = _mix32((h[:, None] + _mul32(col + 1, 0x9E3779B9)) & _MASK32)
    return (bits >> 8).float() * (1.0 / 2**24)  # 24 random bits: exact in float32


def view_stream(seed: int, view: int, role: int) -> int:
    """The random stream of one (seed, test-time view, bank-or-query role). A seed's bits above 32
    are mixed in (seeds 2**32 apart drew the same views); below 2**32 the streams are unchanged."""
    seed = int(seed)
    x = ((seed * 1_000_003 + view) * 7 + role) & _MASK32
    if seed >> 32:
        x ^= int(_mix32(torch.tensor((seed >> 32) & _MASK32)))
    return int(_mix32(torch.tensor(x)))
