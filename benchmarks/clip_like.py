"""A second synthetic distribution, built to look like CLIP ViT-B/32 embeddings, with text-like queries.

What benchmarks/vectors.py lacks and CLIP embeddings have:

* every vector shares one mean direction (pairwise cosines ~0.5, not ~0);
* a flatter spectrum around that mean: eigenvalue i ~ i^-0.6 (so a PCA head of ~100 of 512 dims keeps
  only ~75% of an image's energy);
* very unequal cluster sizes (Zipf exponent 1.1), topics holding sub-topics;
* text queries in another cone: an image-like direction plus a fixed "modality gap" direction that lies
  in the images' low-variance subspace, plus isotropic noise, so the best text-image cosine is ~0.3 and
  most of a text query's energy lies outside the images' top principal components.

Usage:
    from clip_like import make
    base, image_queries, text_queries = make(n=100_000, dim=512, n_queries=1_000, seed=0)
"""

from __future__ import annotations

import numpy as np

MEAN_SHARE = 0.5  # squared weight of the shared mean direction in an image vector
SPECTRUM = 0.1  # residual std ~ i^-SPECTRUM/2 before normalising; measured eigenvalue slope ~ -0.6
ZIPF = 1.1
# A residual = topic centre + sub-topic centre + own noise, with these shares of its energy; sub-topics
# (~SUB_SIZE vectors each on average) give vectors close neighbours, as near-duplicates do in photos.
TOPIC, SUBTOPIC, OWN = 0.35, 0.45, 0.20
SUB_SIZE = 50
# A text query: TEXT_IMAGE·(an image direction) + TEXT_GAP·(gap direction) + TEXT_NOISE·(isotropic), unit.
TEXT_IMAGE, TEXT_GAP, TEXT_NOISE = 0.38, 0.90, 0.20


def make(
    n: int, dim: int = 512, n_queries: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (base, image queries, text queries), float32 unit rows; no query is in base."""
    rng = np.random.default_rng(seed)
    k = max(32, int(np.sqrt(n) * 2))
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    basis = basis.astype(np.float32)
    mean = basis[:, 0]
    resid_basis = basis[:, 1:]  # residuals live orthogonal to the mean
    std = (np.arange(1, dim, dtype=np.float32)) ** (-SPECTRUM / 2)

    def unit_rows(m: int) -> np.ndarray:
        x = rng.standard_normal((m, dim - 1)).astype(np.float32) * std
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def zipf(m: int) -> np.ndarray:
        w = 1.0 / np.arange(1, m + 1) ** ZIPF
        return w / w.sum()

    n_sub = max(k, n // SUB_SIZE)
    centres, subs = unit_rows(k), unit_rows(n_sub)
    parent = rng.choice(k, size=n_sub, p=zipf(k))
    sub_weights = zipf(n_sub)
    spread = rng.uniform(0.6, 1.4, size=n_sub).astype(np.float32)
    # The gap direction: in the residuals' weakest half, so images barely project on it.
    gap = resid_basis[:, dim // 2 :] @ rng.standard_normal(dim - 1 - dim // 2).astype(np.float32)
    gap /= np.linalg.norm(gap)

    def images(m: int) -> np.ndarray:
        out = np.empty((m, dim), dtype=np.float32)
        for start in range(0, m, 65536):
            stop = min(m, start + 65536)
            s = rng.choice(n_sub, size=stop - start, p=sub_weights)
            own = unit_rows(stop - start) * spread[s, None]
            r = np.sqrt(TOPIC) * centres[parent[s]] + np.sqrt(SUBTOPIC) * subs[s] + np.sqrt(OWN) * own
            r /= np.linalg.norm(r, axis=1, keepdims=True)
            x = np.sqrt(MEAN_SHARE) * mean + np.sqrt(1 - MEAN_SHARE) * (r @ resid_basis.T)
            out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    base = images(n)
    image_queries = images(n_queries)
    noise = rng.standard_normal((n_queries, dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    text = TEXT_IMAGE * images(n_queries) + TEXT_GAP * gap + TEXT_NOISE * noise
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return base, image_queries, text.astype(np.float32)
