# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Product / single / residual vector quantizers, composite-id helpers and codebook statistics.

Part of the Hub payload: imports only torch (and the standard library).

Shapes: B batch, T frames, D latent dim (`codebook_dim`), M sub-codebooks (`num_codebooks`), N codewords per
sub-codebook (`codebook_size`), d = D / M for product quantization.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------------------------------
# Float32 islands: the mel front-end and the quantizer compute in float32 whatever the model's dtype or autocast.
# --------------------------------------------------------------------------------------------------------------------


DEAD_CODE_THRESHOLD_MODES = ("relative", "absolute")


def float32_region(tensor: torch.Tensor):
    """A context that turns autocast off on `tensor`'s device type, so ops inside run in the dtype of their inputs.

    Used around the codebook search, EMA and statistics: a bfloat16 distance computation (what autocast, e.g.
    Trainer's `--bf16`, makes of `baddbmm`) flips nearest-codeword decisions between close codewords, and EMA sums
    lose counts in half precision.
    """
    device_type = tensor.device.type
    # `is_autocast_available` is a C builtin that TorchDynamo (torch 2.11) cannot trace; while compiling, assume the
    # device supports autocast (CPU and CUDA do), so `torch.compile(fullgraph=True)` gets one graph.
    if torch.compiler.is_compiling() or torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def keep_float32(fn, only: tuple[torch.Tensor, ...] | None = None):
    """Wraps the function `nn.Module._apply` maps over tensors so float32 tensors never go to a lower precision.

    `module.to(torch.bfloat16)`, `.half()` and `.to(device, dtype)` then move these tensors to the new device but
    keep them float32, exactly (not rounded through the half format). `only`: restrict this to these tensors.
    """

    def apply(tensor):
        result = fn(tensor)
        lowered = (torch.is_tensor(result) and tensor.dtype == torch.float32 and result.is_floating_point()
                   and torch.finfo(result.dtype).bits < 32)
        if lowered and (only is None or any(tensor is kept for kept in only)):
            return tensor.to(device=result.device)
        return result

    return apply


def in_float32(method):
    """Decorator for `method(self, latents, ...)`: runs it with autocast off and floating `latents` cast to float32."""

    @functools.wraps(method)
    def wrapper(self, latents, *args, **kwargs):
        with float32_region(latents):
            return method(self, latents.float() if latents.is_floating_point() else latents, *args, **kwargs)

    return wrapper


def host_scalar(module: nn.Module, name: str):
    """The Python value of `module`'s scalar buffer `name` (a step counter or flag).

    Read from the device only when the buffer changed since the last read or `set_host_scalar` (another tensor
    after `.to()`, or an in-place write such as `load_state_dict`, seen through its version counter), so training
    steps do not wait for the device to check a counter.
    """
    tensor = module._buffers[name]
    cache = module.__dict__.setdefault("_host_scalars", {})
    cached = cache.get(name)
    if cached is None or cached[0] is not tensor or cached[1] != tensor._version:
        cached = cache[name] = (tensor, tensor._version, tensor.item())
    return cached[2]


def set_host_scalar(module: nn.Module, name: str, value) -> None:
    """Writes `value` into the scalar buffer `name` without reading the device, and remembers it."""
    tensor = module._buffers[name]
    tensor.fill_(value)
    module.__dict__.setdefault("_host_scalars", {})[name] = (tensor, tensor._version, value)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean of `values` along `dim` with per-row `weights` (1-D, along `dim`); the plain mean when weights is None."""
    if weights is None:
        return values.mean(dim=dim)
    shape = [1] * values.dim()
    shape[dim] = -1
    return (values * weights.view(shape)).sum(dim=dim) / weights.sum().clamp_min(1.0)


# --------------------------------------------------------------------------------------------------------------------
# Composite ids: the M sub-codes of one frame as one integer of the N^M codebook.
# --------------------------------------------------------------------------------------------------------------------


def codes_to_composite(audio_codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Per-codebook codes (..., M, T) -> composite ids (..., T).

    Mixed radix, little-endian: `id = sum_m codes[m] * N**m`, so sub-codebook 0 is the least significant digit.
    Works on any integer tensor; the result is int64 (N^M must fit in int64).
    """
    num_codebooks = audio_codes.shape[-2]
    if codebook_size**num_codebooks > 2**63 - 1:
        raise ValueError(f"N^M = {codebook_size}^{num_codebooks} does not fit in int64.")
    radix = codebook_size ** torch.arange(num_codebooks, device=audio_codes.device, dtype=torch.int64)
    return (audio_codes.long() * radix[:, None]).sum(dim=-2)


def composite_to_codes(composite_ids: torch.Tensor, codebook_size: int, num_codebooks: int) -> torch.Tensor:
    """Composite ids (..., T) -> per-codebook codes (..., M, T); the exact inverse of `codes_to_composite`."""
    radix = codebook_size ** torch.arange(num_codebooks, device=composite_ids.device, dtype=torch.int64)
    return (composite_ids.long()[..., None, :] // radix[:, None]) % codebook_size


# --------------------------------------------------------------------------------------------------------------------
# Codebook statistics (usage and perplexity), accumulable over many batches.
# --------------------------------------------------------------------------------------------------------------------


def perplexity_from_counts(counts: torch.Tensor) -> float:
    """exp(entropy in nats) of the empirical distribution given by `counts` (0 entries ignored); 0 when empty."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return 0.0
    probs = counts[counts > 0] / total
    return float(torch.exp(-(probs * probs.log()).sum()))


class CodebookStatistics:
    """Accumulates code counts over batches: per sub-codebook (dense, M x N) and composite ids (sparse).

    >>> stats = CodebookStatistics(num_codebooks=2, codebook_size=256)
    >>> stats.update(audio_codes, frame_mask)   # (B, M, T) and (B, T), any number of times
    >>> stats.compute()["composite_perplexity"]

    Composite counts are kept as sorted unique ids with counts, so memory grows with the number of distinct ids seen,
    not with N^M.
    """

    def __init__(self, num_codebooks: int, codebook_size: int):
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.reset()

    def reset(self) -> None:
        self.sub_counts = torch.zeros(self.num_codebooks, self.codebook_size, dtype=torch.int64)
        self.composite_ids = torch.zeros(0, dtype=torch.int64)
        self.composite_counts = torch.zeros(0, dtype=torch.int64)

    @property
    def num_frames(self) -> int:
        return int(self.sub_counts[0].sum())

    def update(self, audio_codes: torch.Tensor, frame_mask: torch.Tensor | None = None) -> None:
        """Add codes of shape (B, M, T) (or (M, T)); `frame_mask` (B, T) selects the valid frames (1 = valid)."""
        codes = audio_codes.detach().to("cpu", torch.int64)
        if codes.dim() == 2:
            codes = codes[None]
        if codes.shape[1] != self.num_codebooks:
            raise ValueError(f"Expected codes of shape (B, {self.num_codebooks}, T), got {tuple(codes.shape)}.")
        flat = codes.transpose(1, 2).reshape(-1, self.num_codebooks)  # (B*T, M)
        if frame_mask is not None:
            flat = flat[frame_mask.detach().to("cpu").reshape(-1).bool()]
        if flat.numel() and (flat.min() < 0 or flat.max() >= self.codebook_size):
            raise ValueError(f"Codes must lie in [0, {self.codebook_size}).")
        offsets = torch.arange(self.num_codebooks, dtype=torch.int64) * self.codebook_size
        self.sub_counts += torch.bincount((flat + offsets).reshape(-1), minlength=self.sub_counts.numel()).view_as(
            self.sub_counts
        )
        new_ids, new_counts = torch.unique(codes_to_composite(flat.T, self.codebook_size), return_counts=True)
        all_ids = torch.cat([self.composite_ids, new_ids])
        all_counts = torch.cat([self.composite_counts, new_counts])
        self.composite_ids, inverse = torch.unique(all_ids, return_inverse=True)
        self.composite_counts = torch.zeros_like(self.composite_ids).scatter_add_(0, inverse, all_counts)

    def merge(self, other: "CodebookStatistics") -> "CodebookStatistics":
        """Add the counts of `other` (e.g. gathered from another process) into this object."""
        self.sub_counts += other.sub_counts
        all_ids = torch.cat([self.composite_ids, other.composite_ids])
        all_counts = torch.cat([self.composite_counts, other.composite_counts])
        self.composite_ids, inverse = torch.unique(all_ids, return_inverse=True)
        self.composite_counts = torch.zeros_like(self.composite_ids).scatter_add_(0, inverse, all_counts)
        return self

    def compute(self) -> dict[str, float | list[float] | int]:
        """Usage (count, fraction) and perplexity per sub-codebook and for composite ids, over all updates so far."""
        sub_usage = (self.sub_counts > 0).sum(dim=1)
        sub_perplexity = [perplexity_from_counts(c) for c in self.sub_counts]
        product = 1.0
        for p in sub_perplexity:
            product *= p
        composite_size = self.codebook_size**self.num_codebooks
        composite_usage = int((self.composite_counts > 0).sum())
        return {
            "num_frames": self.num_frames,
            "codebook_usage": [int(u) for u in sub_usage],
            "codebook_usage_fraction": [float(u) / self.codebook_size for u in sub_usage],
            "codebook_perplexity": sub_perplexity,
            "composite_usage": composite_usage,
            "composite_usage_fraction": composite_usage / composite_size,
            "composite_perplexity": perplexity_from_counts(self.composite_counts),
            "product_of_codebook_perplexities": product,
        }


# --------------------------------------------------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class QuantizerOutput:
    """quantized (B, T, D) with straight-through gradients; latents (B, T, D) the continuous encoder output as the
    quantizer sees it (l2-normalised per chunk with cosine codebooks); codes (B, M, T) int64; losses are scalars over
    valid frames; entropy_loss is 0 unless requested (code-balancing loss, see `VectorQuantizerGroup.entropy_loss`)."""

    quantized: torch.Tensor
    latents: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    entropy_loss: torch.Tensor | None = field(default=None)


def _masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over frames where mask (B, T) is 1; prediction/target are (B, T, D)."""
    weights = mask.to(prediction.dtype)[..., None]
    denom = weights.sum().clamp_min(1.0) * prediction.shape[-1]
    return (((prediction - target) ** 2) * weights).sum() / denom


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes when running distributed, so EMA codebooks stay identical on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _broadcast(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def kmeans(samples: torch.Tensor, num_clusters: int, num_iters: int, generator: torch.Generator | None = None,
           rows_per_chunk: int = 4096):
    """Batched Lloyd k-means. samples (G, n, d) -> centroids (G, num_clusters, d).

    Centroids start at `num_clusters` distinct samples (drawn without replacement); only with fewer samples than
    clusters are samples drawn with replacement (the duplicates then act as restarts later; `kmeans_init_min_frames`
    avoids that by accumulating frames first). Distances are computed `rows_per_chunk` samples at a time, so memory
    stays at rows_per_chunk x num_clusters per group (a 65,536-word codebook on 131,072 frames would otherwise need
    a 34 GB distance matrix); the assignments are the same as unchunked.
    """
    groups, num_samples, _ = samples.shape
    if num_samples >= num_clusters:
        index = torch.stack([torch.randperm(num_samples, generator=generator)[:num_clusters] for _ in range(groups)])
    else:
        index = torch.randint(num_samples, (groups, num_clusters), generator=generator)
    index = index.to(samples.device)
    centroids = torch.gather(samples, 1, index[..., None].expand(-1, -1, samples.shape[-1])).clone()
    previous = None
    for _ in range(num_iters):
        assign = torch.cat([torch.cdist(samples[:, first:first + rows_per_chunk], centroids).argmin(dim=-1)
                            for first in range(0, num_samples, rows_per_chunk)], dim=1)  # (G, n)
        if previous is not None and torch.equal(assign, previous):
            break  # converged: further iterations would recompute the same centroids
        previous = assign
        sums = torch.zeros_like(centroids).scatter_add_(1, assign[..., None].expand_as(samples), samples)
        counts = torch.zeros(groups, num_clusters, device=samples.device, dtype=samples.dtype)
        counts.scatter_add_(1, assign, torch.ones_like(assign, dtype=samples.dtype))
        centroids = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centroids)
    return centroids


def _distances_without_input_norm(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """||c||^2 - 2 x.c for x (G, n, d) and codebook (G, N, d) -> (G, n, N): squared distances minus ||x||^2."""
    return torch.baddbmm((codebook**2).sum(-1)[:, None, :], x, codebook.transpose(1, 2), alpha=-2.0)


class VectorQuantizerGroup(nn.Module):
    """G independent codebooks of N codewords of dim d, searched in parallel.

    This is the engine of product quantization (G = M sub-spaces of one frame) and of each residual stage (G = 1).
    Training tricks are named flags: EMA updates, k-means init, dead-code restarts, cosine (l2-normalised) search.

    Buffers: `codebook` is a Parameter (trained by gradient unless `use_ema`), `ema_cluster_size` / `ema_embed_sum`
    hold EMA statistics, `usage_ema` the moving-average usage for dead-code restarts, `initialized` whether the
    statistics have been seeded, `steps` the number of training forwards seen. All buffers start at zero (False) and
    are seeded by the first training forward: k-means on its valid frames sets the codebook (with `kmeans_init`),
    then each codeword's EMA sum is itself with a cluster size of one and its usage the uniform share (or the
    threshold, when larger).

    Dead codes: with `dead_code_threshold_mode="relative"` (default) `usage_ema` is each codeword's share of the
    batch's valid frames times N (1.0 = the uniform share, so independent of batch size and process count) and a
    codeword is dead below `dead_code_threshold` of that; with `"absolute"` it is the number of assignments per
    (global) batch and the threshold is a count.

    Remedies that scale with the codebook (all off by default, which keeps the behaviour of existing configs): with
    N codewords and F valid frames per batch, a codebook larger than F cannot be kept alive, initialised or judged
    from one batch. `kmeans_init_min_frames` accumulates frames over batches (the quantizer passes latents through
    meanwhile) and runs k-means once it has that many; `dead_code_replay_frames` keeps a ring buffer of recent
    encoder outputs and restarts dead codewords with distinct frames drawn from it without replacement, so more
    than F codewords can be revived at once; `usage_window_frames` makes the usage average span that many frames
    whatever the batch size, so a uniformly used codeword has many expected uses in the window; and
    `dead_code_restart_last_step` stops restarts after that training step, so codebooks evaluated after training hold
    trained codewords rather than fresh copies of the last batch.

    Precision: codebook and statistics are float32 and stay float32 when the model is cast to half precision;
    search, EMA, k-means and restarts run in float32 with autocast off. Outputs (codewords) are float32.
    """

    def __init__(
        self,
        num_groups: int,
        codebook_size: int,
        dim: int,
        *,
        use_ema: bool = True,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.2,
        dead_code_threshold_mode: str = "relative",
        dead_code_restart_interval: int = 50,
        usage_decay: float = 0.99,
        use_cosine: bool = False,
        kmeans_init_min_frames: int = 0,
        dead_code_replay_frames: int = 0,
        usage_window_frames: int = 0,
        dead_code_restart_last_step: int = 0,
    ):
        super().__init__()
        if dead_code_threshold_mode not in DEAD_CODE_THRESHOLD_MODES:
            raise ValueError(f"`dead_code_threshold_mode` must be one of {DEAD_CODE_THRESHOLD_MODES}, got"
                             f" {dead_code_threshold_mode!r}.")
        for name, value in (("kmeans_init_min_frames", kmeans_init_min_frames),
                            ("dead_code_replay_frames", dead_code_replay_frames),
                            ("usage_window_frames", usage_window_frames),
                            ("dead_code_restart_last_step", dead_code_restart_last_step)):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 turns it off), got {value}.")
        self.num_groups = num_groups
        self.codebook_size = codebook_size
        self.dim = dim
        self.kmeans_init_min_frames = kmeans_init_min_frames
        self.dead_code_replay_frames = dead_code_replay_frames
        self.usage_window_frames = usage_window_frames
        self.dead_code_restart_last_step = dead_code_restart_last_step
        # Frames seen before initialisation (with `kmeans_init_min_frames`): a list of (n, G, d) tensors, dropped
        # once k-means has run. `last_init_frames` keeps the frames k-means used until a caller takes them
        # (ResidualQuantizer initialises its later stages on their residuals).
        self._init_frames: list[torch.Tensor] = []
        self.last_init_frames: torch.Tensor | None = None
        self.use_ema = use_ema
        self.ema_decay = ema_decay
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.dead_code_threshold_mode = dead_code_threshold_mode
        self.dead_code_restart_interval = dead_code_restart_interval
        self.usage_decay = usage_decay
        self.use_cosine = use_cosine
        # Set by `PQVAEModel.freeze_codebooks()` (fine-tuning): no k-means, EMA or restarts, no gradient.
        self.frozen = False

        # Explicit float32: transformers builds the model under the requested default dtype.
        float32 = dict(dtype=torch.float32)
        self.codebook = nn.Parameter(torch.empty(num_groups, codebook_size, dim, **float32), requires_grad=not use_ema)
        self.register_buffer("ema_cluster_size", torch.zeros(num_groups, codebook_size, **float32))
        self.register_buffer("ema_embed_sum", torch.zeros(num_groups, codebook_size, dim, **float32))
        self.register_buffer("usage_ema", torch.zeros(num_groups, codebook_size, **float32))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        if dead_code_replay_frames:
            # Not saved with the model (training state only, and it would add S x G x d floats to every checkpoint).
            self.register_buffer("replay_latents", torch.zeros(dead_code_replay_frames, num_groups, dim, **float32),
                                 persistent=False)
            self.register_buffer("replay_weights", torch.zeros(dead_code_replay_frames, **float32), persistent=False)
            self.register_buffer("replay_position", torch.tensor(0, dtype=torch.int64), persistent=False)

    def reset_codebook(self) -> None:
        """Default init: uniform(-1/N, 1/N) as in the original VQ-VAE (k-means init replaces it on the first batch),
        statistics zero and unseeded, as registered (the same as `PQVAEPreTrainedModel._init_weights`)."""
        with torch.no_grad():
            self.codebook.uniform_(-1.0 / self.codebook_size, 1.0 / self.codebook_size)
            self.ema_embed_sum.zero_()
            self.ema_cluster_size.zero_()
            self.usage_ema.zero_()
            self.initialized.fill_(False)
            self.steps.zero_()
            self._init_frames = []
            self.last_init_frames = None
            if self.dead_code_replay_frames:
                self.replay_latents.zero_()
                self.replay_weights.zero_()
                self.replay_position.zero_()

    def _apply(self, fn, recurse=True):
        return super()._apply(keep_float32(fn), recurse)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.use_cosine else x

    def search(self, latents: torch.Tensor) -> torch.Tensor:
        """Nearest codeword per group. latents (n, G, d) -> codes (n, G) int64, by squared L2 (or cosine), in float32."""
        with float32_region(latents):
            x = self._normalized(latents.float()).transpose(0, 1)  # (G, n, d)
            # argmin ||x - c||^2 = argmin (||c||^2 - 2 x.c): ||x||^2 is constant per row and skipped.
            codebook = self._normalized(self.codebook.float())
            return _distances_without_input_norm(x, codebook).argmin(dim=-1).transpose(0, 1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (n, G) -> codewords (n, G, d) float32 (a contiguous gather: one embedding over the G codebooks)."""
        codebook = self._normalized(self.codebook.float()).reshape(self.num_groups * self.codebook_size, self.dim)
        offsets = torch.arange(self.num_groups, device=codes.device) * self.codebook_size
        return F.embedding(codes + offsets, codebook)

    @torch.no_grad()
    def _accumulate_for_init(self, valid_latents: torch.Tensor) -> torch.Tensor | None:
        """Keeps this batch's valid frames (n, G, d) until `kmeans_init_min_frames` are held (on every process, so all
        ranks initialise at the same step); then returns them all, concatenated, and forgets them. None while short."""
        if valid_latents.shape[0]:
            self._init_frames.append(valid_latents.detach().clone())
        held = torch.tensor(sum(f.shape[0] for f in self._init_frames), device=valid_latents.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(held, op=dist.ReduceOp.MIN)
        if int(held) < self.kmeans_init_min_frames:
            return None
        frames, self._init_frames = torch.cat(self._init_frames), []
        return frames

    @torch.no_grad()
    def _initialize(self, valid_latents: torch.Tensor) -> None:
        """Seeds codebook (k-means, with `kmeans_init`) and statistics from the first training batch (or, with
        `kmeans_init_min_frames`, from the frames accumulated over the first batches)."""
        if self.kmeans_init:
            samples = self._normalized(valid_latents).transpose(0, 1).float()  # (G, n, d)
            # Ranks hold different frames: each runs k-means on its own, rank 0's centroids win everywhere.
            centroids = kmeans(samples, self.codebook_size, self.kmeans_iters)
        else:
            centroids = self.codebook.data.float()
        centroids = _broadcast(centroids.contiguous())  # identical codebooks on every rank
        self.codebook.data.copy_(centroids)
        self.ema_embed_sum.copy_(centroids)
        self.ema_cluster_size.fill_(1.0)
        self.usage_ema.fill_(max(self.dead_code_threshold, 1.0))
        set_host_scalar(self, "initialized", True)
        if self.kmeans_init and self.kmeans_init_min_frames:
            self.last_init_frames = valid_latents

    @torch.no_grad()
    def _update_statistics(self, latents: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor) -> None:
        """EMA codebook update and usage tracking from this batch's frames (n, G, d) and codes (n, G), each frame
        weighted by `weights` (n,) (1 valid, 0 padding: no data-dependent shapes), summed over processes."""
        # Scatter-adds into flat (G * N) slots rather than a dense (n, G, N) one-hot: for a 65,536-word codebook the
        # one-hot is n x 65,536 floats and made this update cost 1.5 s per batch of 2,000 frames on one CPU core.
        groups, size = self.num_groups, self.codebook_size
        slots = (codes + torch.arange(groups, device=codes.device) * size).reshape(-1)  # (n * G,)
        frame_weights = weights[:, None].expand(-1, groups).reshape(-1)
        counts = torch.zeros(groups * size, device=latents.device, dtype=latents.dtype)
        counts = _all_reduce_sum(counts.index_add_(0, slots, frame_weights).view(groups, size))  # (G, N)
        if self.dead_code_threshold_mode == "relative":  # share of this (global) batch's frames, 1.0 = uniform
            usage = counts * (self.codebook_size / counts.sum(-1, keepdim=True).clamp_min(1.0))
        else:  # assignments per (global) batch
            usage = counts
        if self.usage_window_frames:
            # decay exp(-F / W) per batch of F frames: the average spans about W frames whatever the batch size.
            usage_decay = torch.exp(-counts.sum(-1, keepdim=True) / self.usage_window_frames)  # (G, 1)
            self.usage_ema.mul_(usage_decay).add_(usage * (1 - usage_decay))
        else:
            self.usage_ema.mul_(self.usage_decay).add_(usage, alpha=1 - self.usage_decay)
        if self.use_ema:
            weighted = (self._normalized(latents) * weights[:, None, None]).reshape(-1, self.dim)  # (n * G, d)
            sums = torch.zeros(groups * size, self.dim, device=latents.device, dtype=latents.dtype)
            sums = _all_reduce_sum(sums.index_add_(0, slots, weighted).view(groups, size, self.dim))
            self.ema_cluster_size.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
            self.ema_embed_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
            # Laplace smoothing keeps rarely used codewords from dividing by ~0.
            total = self.ema_cluster_size.sum(-1, keepdim=True)
            smoothed = (self.ema_cluster_size + 1e-5) / (total + self.codebook_size * 1e-5) * total
            self.codebook.data.copy_(self.ema_embed_sum / smoothed[..., None])

    @torch.no_grad()
    def _remember_for_restarts(self, latents: torch.Tensor, weights: torch.Tensor) -> None:
        """Writes this batch's frames (n, G, d) and their weights (n,) (1 valid, 0 padding) into the replay ring.
        All frames are kept, padding with weight 0, so no device-to-host read is needed in an ordinary step."""
        capacity = self.dead_code_replay_frames
        latents, weights = latents[-capacity:], weights[-capacity:]  # a batch larger than the ring: its newest rows
        position = host_scalar(self, "replay_position")
        rows = (position + torch.arange(latents.shape[0], device=latents.device)) % capacity
        self.replay_latents.index_copy_(0, rows, latents.detach().float())
        self.replay_weights.index_copy_(0, rows, weights.detach().float())
        set_host_scalar(self, "replay_position", (position + latents.shape[0]) % capacity)

    def restarts_allowed(self, step: int) -> bool:
        """Whether the dead-code rule runs at training step `step` (counted from 1)."""
        if self.dead_code_threshold <= 0 or step % self.dead_code_restart_interval:
            return False
        return not self.dead_code_restart_last_step or step <= self.dead_code_restart_last_step

    @torch.no_grad()
    def _restart_dead_codes(self, valid_latents: torch.Tensor) -> None:
        """Re-seed codewords whose moving-average usage fell below the threshold with random encoder outputs:
        from the current batch (with replacement), or with `dead_code_replay_frames` from distinct frames of the
        replay ring (without replacement: each revived codeword gets its own frame; with more dead codewords than
        remembered frames, the rest wait for the next restart)."""
        dead = self.usage_ema < self.dead_code_threshold  # (G, N)
        if not bool(dead.any()):
            return
        if self.dead_code_replay_frames:
            stored = self.replay_weights > 0
            if not bool(stored.any()):
                return
            samples = self._normalized(self.replay_latents[stored])  # (S', G, d)
            # Per group: a random order of the remembered frames, the k-th dead codeword takes the k-th frame.
            order = torch.argsort(torch.rand(self.num_groups, samples.shape[0], device=samples.device), dim=1)
            rank = dead.long().cumsum(-1) - 1  # (G, N): position of each dead codeword among its group's dead ones
            dead = dead & (rank < samples.shape[0])
            pick = torch.gather(order, 1, rank.clamp(0, samples.shape[0] - 1))  # (G, N)
        else:
            if valid_latents.shape[0] == 0:
                return
            samples = self._normalized(valid_latents)  # (n, G, d)
            pick = torch.randint(samples.shape[0], (self.num_groups, self.codebook_size), device=samples.device)
        replacement = samples[pick, torch.arange(self.num_groups, device=samples.device)[:, None]]  # (G, N, d)
        replacement = _broadcast(replacement.contiguous())
        dead = _broadcast(dead.contiguous())
        self.codebook.data.copy_(torch.where(dead[..., None], replacement, self.codebook.data))
        self.ema_embed_sum.copy_(torch.where(dead[..., None], replacement, self.ema_embed_sum))
        self.ema_cluster_size.copy_(torch.where(dead, torch.ones_like(self.ema_cluster_size), self.ema_cluster_size))
        # A fresh codeword gets one threshold of credit so it is not restarted again before it can win frames.
        self.usage_ema.copy_(torch.where(dead, torch.full_like(self.usage_ema, max(self.dead_code_threshold, 1.0)),
                                         self.usage_ema))

    def entropy_loss(self, valid_latents: torch.Tensor, temperature: float = 1.0,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
        """Code-balancing loss on soft assignments. valid_latents (n, G, d), differentiable -> scalar. `weights` (n,)
        (1 valid, 0 padding) lets callers pass all frames instead of selecting the valid ones.

        p(k | x) = softmax_k(-||x - c_k||^2 / tau), with tau = `temperature` x the batch's mean squared distance to
        the nearest codeword (scale-free). Loss = mean over groups of [mean_x H(p(.|x)) - H(mean_x p(.|x))] / log N:
        the first term keeps each frame's assignment confident, the second spreads the batch over all N codewords.
        Its gradient reaches the encoder only; codewords move by EMA / their own loss. Lies in [-1, 1]. Float32.
        """
        with float32_region(valid_latents):
            x = self._normalized(valid_latents.float()).transpose(0, 1)  # (G, n, d)
            distances = _distances_without_input_norm(x, self._normalized(self.codebook.float()).detach())
            distances = distances + (x**2).sum(-1, keepdim=True)  # (G, n, N) squared distances
            nearest = distances.detach().min(dim=-1).values  # (G, n)
            scale = _weighted_mean(nearest, weights, dim=1).clamp_min(1e-8)[:, None, None]
            log_probs = F.log_softmax(-distances / (temperature * scale), dim=-1)
            probs = log_probs.exp()
            frame_entropy = _weighted_mean(-(probs * log_probs).sum(-1), weights, dim=1)  # (G,)
            mean_probs = _weighted_mean(probs, weights, dim=1)
            batch_entropy = -(mean_probs * mean_probs.clamp_min(1e-12).log()).sum(-1)
            return ((frame_entropy - batch_entropy) / math.log(self.codebook_size)).mean()

    def forward(self, latents: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents (B, T, G, d), mask (B, T) -> (codewords (B, T, G, d) without straight-through, codes (B, T, G)).

        In training mode this also runs k-means init (first batch), EMA updates and dead-code restarts, all from
        valid frames only, in float32 whatever the input dtype or autocast state. Codewords are float32.
        With `kmeans_init_min_frames`, the steps before initialisation return the latents themselves as codewords
        (the decoder trains on the continuous latents meanwhile) and codes 0 (an unseeded codebook has no meaning,
        and searching a 65,536-word one would cost as much as a real step).
        """
        with float32_region(latents):
            batch, frames = latents.shape[:2]
            flat = latents.detach().float().reshape(batch * frames, self.num_groups, self.dim)
            updating = self.training and not self.frozen
            if updating and not host_scalar(self, "initialized"):  # the first training steps: reading is fine
                valid = flat[mask.reshape(-1).bool()]
                if self.kmeans_init and self.kmeans_init_min_frames:
                    valid = self._accumulate_for_init(valid)
                    if valid is None:  # still collecting frames: pass the latents through
                        set_host_scalar(self, "steps", host_scalar(self, "steps") + 1)
                        codes = torch.zeros(batch, frames, self.num_groups, dtype=torch.int64, device=flat.device)
                        return self._normalized(flat).view(batch, frames, self.num_groups, self.dim), codes
                if valid.shape[0] > 0:
                    self._initialize(valid)
            codes = self.search(flat)
            if updating:
                # Every frame, weighted by the mask: no device-to-host read in an ordinary training step.
                weights = mask.reshape(-1).to(flat.dtype)
                self._update_statistics(flat, codes, weights)
                if self.dead_code_replay_frames:
                    self._remember_for_restarts(flat, weights)
                steps = host_scalar(self, "steps") + 1
                set_host_scalar(self, "steps", steps)
                if self.restarts_allowed(steps):
                    self._restart_dead_codes(flat[mask.reshape(-1).bool()])
                    codes = self.search(flat)
            codewords = self.lookup(codes)
        return codewords.view(batch, frames, self.num_groups, self.dim), codes.view(batch, frames, self.num_groups)


def balanced_pca_rotation(latents: torch.Tensor, num_subspaces: int) -> torch.Tensor:
    """Orthogonal (D, D) matrix R from the PCA of latents (n, D), with `latents @ R` split into equal chunks.

    Eigen-directions are dealt out greedily, largest variance first, to the sub-space whose product of variances is
    smallest so far ("eigenvalue allocation" of optimised product quantisation, Ge et al. 2013): the rotated
    coordinates are decorrelated and every sub-space gets a similar share of the variance.
    """
    dim = latents.shape[-1]
    chunk = dim // num_subspaces
    centred = latents.double() - latents.double().mean(0)
    covariance = centred.T @ centred / max(latents.shape[0] - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(eigenvalues, descending=True)
    log_products = [0.0] * num_subspaces
    members: list[list[int]] = [[] for _ in range(num_subspaces)]
    for index in order.tolist():
        open_subspaces = [s for s in range(num_subspaces) if len(members[s]) < chunk]
        target = min(open_subspaces, key=lambda s: log_products[s])
        members[target].append(index)
        log_products[target] += math.log(max(float(eigenvalues[index]), 1e-12))
    columns = [index for subspace in members for index in subspace]
    return eigenvectors[:, columns].to(latents.dtype)


class ProductQuantizer(nn.Module):
    """Splits a latent (B, T, D) into M chunks of d = D / M and quantizes each with its own N-word codebook.

    M = 1 is plain single-codebook VQ. Straight-through estimator; codebook loss (skipped with EMA updates) and
    commitment loss are mean squared errors over valid frames.

    With `subspace_rotation="opq"` the latent is first multiplied by an orthogonal `rotation` (D, D): initialised by
    `balanced_pca_rotation` on the first training batch, then every `rotation_update_interval` steps set to the
    orthogonal Procrustes solution argmin_R ||X R - Q|| from moving averages of X^T Q (X latents, Q their codewords).
    Everything downstream (codewords, decoder input, dual decoding) lives in the rotated space.
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        codebook_dim: int,
        *,
        subspace_rotation: str = "none",
        rotation_update_interval: int = 50,
        entropy_temperature: float = 1.0,
        **flags,
    ):
        super().__init__()
        if codebook_dim % num_codebooks:
            raise ValueError(f"codebook_dim={codebook_dim} must be divisible by num_codebooks={num_codebooks}.")
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.subspace_rotation = subspace_rotation
        self.rotation_update_interval = rotation_update_interval
        self.entropy_temperature = entropy_temperature
        self.codebooks = VectorQuantizerGroup(num_codebooks, codebook_size, codebook_dim // num_codebooks, **flags)
        if subspace_rotation == "opq":
            self.register_buffer("rotation", torch.eye(codebook_dim, dtype=torch.float32))
            self.register_buffer("rotation_initialized", torch.tensor(False))
            self.register_buffer("ema_cross_covariance", torch.zeros(codebook_dim, codebook_dim, dtype=torch.float32))
            self.register_buffer("rotation_steps", torch.tensor(0, dtype=torch.int64))

    def _apply(self, fn, recurse=True):
        return super()._apply(keep_float32(fn), recurse)

    def _rotate(self, latents: torch.Tensor) -> torch.Tensor:
        if self.subspace_rotation != "opq":
            return latents
        # A copy in training: autograd keeps R for the backward pass while `_update_rotation` rewrites the buffer.
        return latents @ (self.rotation.clone() if torch.is_grad_enabled() else self.rotation)

    @torch.no_grad()
    def _update_rotation(self, latents: torch.Tensor, codewords: torch.Tensor,
                         weights: torch.Tensor | None = None) -> None:
        """latents (n, D) before rotation, codewords (n, D) in rotated space, weights (n,) 1 for valid frames."""
        latents = latents.double() if weights is None else latents.double() * weights.double()[:, None]
        cross = _all_reduce_sum(latents.T @ codewords.double())
        decay = self.codebooks.ema_decay
        self.ema_cross_covariance.mul_(decay).add_(cross.to(self.ema_cross_covariance.dtype), alpha=1 - decay)
        steps = host_scalar(self, "rotation_steps") + 1
        set_host_scalar(self, "rotation_steps", steps)
        if steps % self.rotation_update_interval == 0:
            left, _, right_t = torch.linalg.svd(self.ema_cross_covariance.double())
            self.rotation.copy_((left @ right_t).to(self.rotation.dtype))

    @in_float32
    def forward(self, latents: torch.Tensor, mask: torch.Tensor, with_entropy_loss: bool = False) -> QuantizerOutput:
        """latents (B, T, D), mask (B, T) -> QuantizerOutput with quantized (B, T, D) and codes (B, M, T).

        Everything runs in float32 (autocast off); gradients flow back to `latents` in their own dtype."""
        batch, frames, _ = latents.shape
        updating = self.training and not self.codebooks.frozen
        weights = mask.reshape(-1).to(latents.dtype)
        if self.subspace_rotation == "opq" and updating and not host_scalar(self, "rotation_initialized"):
            valid = latents.detach().reshape(-1, self.codebook_dim)[mask.reshape(-1).bool()]  # first step only
            if valid.shape[0] > 1:
                self.rotation.copy_(_broadcast(balanced_pca_rotation(valid.float(), self.num_codebooks).contiguous()))
                set_host_scalar(self, "rotation_initialized", True)
        rotated = self._rotate(latents)
        chunks = rotated.view(batch, frames, self.num_codebooks, -1)
        codewords, codes = self.codebooks(chunks, mask)
        target = self.codebooks._normalized(chunks).reshape(batch, frames, -1)
        codewords = codewords.reshape(batch, frames, -1)
        if self.subspace_rotation == "opq" and updating:
            self._update_rotation(latents.detach().reshape(-1, self.codebook_dim),
                                  codewords.detach().reshape(-1, self.codebook_dim), weights)
        output = _straight_through(target, codewords, codes.transpose(1, 2), mask, self.codebooks.use_ema)
        if with_entropy_loss:
            all_chunks = chunks.reshape(batch * frames, self.num_codebooks, -1)
            output.entropy_loss = self.codebooks.entropy_loss(all_chunks, self.entropy_temperature, weights)
        return output

    @in_float32
    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, T, D) -> codes (B, M, T), no training side effects."""
        batch, frames, _ = latents.shape
        codes = self.codebooks.search(self._rotate(latents).reshape(batch * frames, self.num_codebooks, -1))
        return codes.view(batch, frames, self.num_codebooks).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, M, T) -> quantized latents (B, T, D) (in the rotated space when a rotation is used)."""
        batch, _, frames = codes.shape
        codewords = self.codebooks.lookup(codes.transpose(1, 2).reshape(batch * frames, self.num_codebooks))
        return codewords.reshape(batch, frames, self.codebook_dim)


class ResidualQuantizer(nn.Module):
    """Residual VQ baseline: M stages, each quantizing the residual of the previous ones with N full-dim codewords."""

    def __init__(self, num_codebooks: int, codebook_size: int, codebook_dim: int, *,
                 entropy_temperature: float = 1.0, **flags):
        super().__init__()
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.entropy_temperature = entropy_temperature
        if flags.get("use_cosine"):
            raise ValueError("use_cosine_codebook is not defined for residual VQ (residuals are not unit vectors).")
        self.stages = nn.ModuleList(
            VectorQuantizerGroup(1, codebook_size, codebook_dim, **flags) for _ in range(num_codebooks)
        )

    @in_float32
    def forward(self, latents: torch.Tensor, mask: torch.Tensor, with_entropy_loss: bool = False) -> QuantizerOutput:
        batch, frames, dim = latents.shape
        residual = latents
        total = torch.zeros_like(latents)
        all_codes, entropy_losses = [], []
        weights = mask.reshape(-1).to(latents.dtype)
        for index, stage in enumerate(self.stages):
            if with_entropy_loss:
                entropy_losses.append(stage.entropy_loss(residual.reshape(-1, 1, dim), self.entropy_temperature, weights))
            codewords, codes = stage(residual.view(batch, frames, 1, dim), mask)
            codewords = codewords.view(batch, frames, dim)
            total = total + codewords
            residual = residual - codewords.detach()
            all_codes.append(codes.view(batch, frames))
            if stage.training and not stage.frozen and stage.kmeans_init and stage.kmeans_init_min_frames:
                if not host_scalar(stage, "initialized"):
                    # Still collecting frames (`kmeans_init_min_frames`): this stage passed its input through, so the
                    # later stages have nothing to quantize yet; they are initialised with it (below).
                    all_codes += [torch.zeros_like(all_codes[-1])] * (len(self.stages) - index - 1)
                    break
                if stage.last_init_frames is not None and index + 1 < len(self.stages):
                    self._initialize_later_stages(index, stage.last_init_frames)
                stage.last_init_frames = None
        codes = torch.stack(all_codes, dim=1)
        output = _straight_through(latents, total, codes, mask, self.stages[0].use_ema)
        if with_entropy_loss:
            output.entropy_loss = torch.stack(entropy_losses).mean()
        return output

    @torch.no_grad()
    def _initialize_later_stages(self, index: int, frames: torch.Tensor) -> None:
        """Stage `index` just ran k-means on `frames` (n, 1, D): seed every later stage by k-means on the residuals of
        the same frames after the stages before it (sequential residual k-means), at the same training step."""
        residual = frames
        # The later stages skipped the warm-up steps: give them the step count they will have after this forward, so
        # every stage restarts (and stops restarting) at the same training steps.
        steps = host_scalar(self.stages[index], "steps") - 1
        for previous, stage in zip(self.stages[index:], self.stages[index + 1:]):
            residual = residual - previous.lookup(previous.search(residual))
            stage._initialize(residual)
            stage.last_init_frames = None
            set_host_scalar(stage, "steps", steps)

    @in_float32
    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        batch, frames, dim = latents.shape
        residual = latents.reshape(batch * frames, 1, dim)
        all_codes = []
        for stage in self.stages:
            codes = stage.search(residual)
            residual = residual - stage.lookup(codes)
            all_codes.append(codes.view(batch, frames))
        return torch.stack(all_codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        batch, _, frames = codes.shape
        total = 0
        for index, stage in enumerate(self.stages):
            total = total + stage.lookup(codes[:, index].reshape(-1, 1))
        return total.view(batch, frames, self.codebook_dim)


def _straight_through(target, codewords, codes, mask, use_ema) -> QuantizerOutput:
    commitment_loss = _masked_mse(target, codewords.detach(), mask)
    if use_ema:
        codebook_loss = torch.zeros((), device=target.device, dtype=target.dtype)
    else:
        codebook_loss = _masked_mse(codewords, target.detach(), mask)
    quantized = target + (codewords - target).detach()
    return QuantizerOutput(quantized=quantized, latents=target, codes=codes, codebook_loss=codebook_loss,
                           commitment_loss=commitment_loss)


__all__ = [
    "CodebookStatistics",
    "ProductQuantizer",
    "ResidualQuantizer",
    "VectorQuantizerGroup",
    "balanced_pca_rotation",
    "codes_to_composite",
    "composite_to_codes",
    "kmeans",
    "perplexity_from_counts",
]
