"""Peer quantizers from lucidrains' vector-quantize-pytorch, dropped into the PQ-VAE backbone (benchmark only).

`vector-quantize-pytorch` is a benchmark-only dependency (`pip install .[bench]`); the model package never imports
it. Each peer is wrapped to the interface `PQVAEModel` expects of its `quantizer`:

    forward(latents (B, T, D), mask (B, T), with_entropy_loss=False) -> QuantizerOutput (codes (B, 1, T))
    encode(latents) -> codes (B, 1, T)          decode(codes) -> latents (B, T, D)

Every peer emits one id per frame from a codebook of `codebook_size` entries, so the model's config describes it as
`quantizer_type="vq", num_codebooks=1` and all usage / perplexity / bit-rate bookkeeping stays the same. A peer's own
losses (already weighted by the peer) are returned as `codebook_loss`, which the model adds with weight 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pqvae_hf.modeling.quantization_pqvae import QuantizerOutput

# FSQ levels recommended by Mentzer et al. (2023, table 1) for a ~2^16 codebook: 8*8*8*5*5*5 = 64,000 codes.
FSQ_LEVELS_2_16 = (8, 8, 8, 5, 5, 5)


class PeerQuantizer(nn.Module):
    """kind: "vq" (`VectorQuantize`: k-means init + EMA + dead-code replacement), "fsq" (`FSQ`) or "simvq" (`SimVQ`)."""

    num_codebooks = 1

    def __init__(self, kind: str, codebook_dim: int, codebook_size: int, *, ema_decay: float = 0.99,
                 commitment_weight: float = 0.25, dead_code_threshold: float = 1.0):
        super().__init__()
        from vector_quantize_pytorch import FSQ, SimVQ, VectorQuantize

        self.kind = kind
        self.codebook_dim = codebook_dim
        if kind == "vq":
            self.inner = VectorQuantize(
                dim=codebook_dim, codebook_size=codebook_size, decay=ema_decay, kmeans_init=True, kmeans_iters=10,
                threshold_ema_dead_code=dead_code_threshold, commitment_weight=commitment_weight)
        elif kind == "fsq":
            self.inner = FSQ(levels=list(FSQ_LEVELS_2_16), dim=codebook_dim)
            codebook_size = math.prod(FSQ_LEVELS_2_16)
        elif kind == "simvq":
            self.inner = SimVQ(dim=codebook_dim, codebook_size=codebook_size, commitment_weight=1.0)
        else:
            raise ValueError(f"Unknown peer kind {kind!r}; expected 'vq', 'fsq' or 'simvq'.")
        self.codebook_size = codebook_size

    def _quantize(self, latents: torch.Tensor, mask: torch.Tensor | None):
        if self.kind == "vq":
            return self.inner(latents, mask=None if mask is None else mask.bool())
        if self.kind == "fsq":
            quantized, indices = self.inner(latents)
            return quantized, indices, torch.zeros((), device=latents.device)
        return self.inner(latents)

    def forward(self, latents: torch.Tensor, mask: torch.Tensor, with_entropy_loss: bool = False) -> QuantizerOutput:
        if with_entropy_loss:
            raise ValueError("Peer quantizers bring their own recipe: set entropy_loss_weight=0.")
        quantized, indices, loss = self._quantize(latents, mask)
        zero = torch.zeros((), device=latents.device)
        return QuantizerOutput(quantized=quantized, latents=latents, codes=indices.long()[:, None, :],
                               codebook_loss=loss.sum() if loss.dim() else loss, commitment_loss=zero)

    @torch.no_grad()
    def encode(self, latents: torch.Tensor, frames_per_call: int = 1024) -> torch.Tensor:
        # In chunks of frames: a whole padded batch of long clips against 65,536 codewords made VectorQuantize
        # allocate 22 GB (the process was OOM-killed in the first full run).
        rows = latents.reshape(1, -1, latents.shape[-1])
        indices = torch.cat([self._quantize(rows[:, start:start + frames_per_call], None)[1].reshape(-1)
                             for start in range(0, rows.shape[1], frames_per_call)])
        return indices.long().view(latents.shape[0], 1, latents.shape[1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        indices = codes[:, 0]
        if self.kind == "vq":
            return self.inner.get_output_from_indices(indices)
        return self.inner.indices_to_codes(indices)


def peer_config_overrides(kind: str) -> dict:
    """Config fields describing a peer to the model (one id per frame; no DD; no PQ-VAE quantizer tricks)."""
    size = math.prod(FSQ_LEVELS_2_16) if kind == "fsq" else 65536
    return dict(quantizer_type="vq", num_codebooks=1, codebook_size=size, dual_decoding_weight=0.0,
                entropy_loss_weight=0.0, peer=kind)


def install_peer(model, kind: str) -> None:
    """Replace `model.quantizer` by the peer (weights freshly initialised by the peer's own constructor)."""
    config = model.config
    model.quantizer = PeerQuantizer(kind, config.codebook_dim, config.codebook_size, ema_decay=config.ema_decay,
                                    commitment_weight=config.commitment_weight,
                                    dead_code_threshold=config.dead_code_threshold)


def build_backbone(base: dict, overrides: dict):
    """The benchmark backbone: `PQVAEModel` from `base` config fields plus one variant's `overrides`; an override
    `peer=<kind>` describes that peer to the config and swaps it in as the quantizer. -> (model, peer kind or None)."""
    from pqvae_hf import PQVAEConfig, PQVAEModel

    overrides = dict(overrides)
    peer = overrides.pop("peer", None)
    if peer:
        overrides = {**peer_config_overrides(peer), **overrides}
        overrides.pop("peer")
    model = PQVAEModel(PQVAEConfig(**{**base, **overrides}))
    if peer:
        install_peer(model, peer)
    return model, peer
