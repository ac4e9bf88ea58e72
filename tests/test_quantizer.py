import math

import pytest
import torch

from pqvae_hf.modeling.quantization_pqvae import (
    CodebookStatistics,
    ProductQuantizer,
    ResidualQuantizer,
    VectorQuantizerGroup,
    balanced_pca_rotation,
    codes_to_composite,
    composite_to_codes,
    kmeans,
    perplexity_from_counts,
)


def test_composite_ids_are_little_endian_mixed_radix_and_invert_exactly():
    codes = torch.tensor([[[1, 0, 15], [2, 0, 15]]])  # (B=1, M=2, T=3), N=16
    assert codes_to_composite(codes, 16).tolist() == [[1 + 2 * 16, 0, 255]]
    generator = torch.Generator().manual_seed(0)
    for num_codebooks, size in [(1, 65536), (2, 256), (4, 16), (3, 1024)]:
        codes = torch.randint(size, (3, num_codebooks, 50), generator=generator)
        ids = codes_to_composite(codes, size)
        assert ids.shape == (3, 50) and int(ids.max()) < size**num_codebooks
        assert torch.equal(composite_to_codes(ids, size, num_codebooks), codes)


def test_product_quantizer_picks_the_true_nearest_codeword():
    torch.manual_seed(0)
    quantizer = ProductQuantizer(4, 32, 24, use_ema=False, kmeans_init=False, dead_code_threshold=0.0)
    quantizer.codebooks.codebook.data.normal_()
    latents = torch.randn(2, 37, 24)
    codes = quantizer.encode(latents)  # (B, M, T)
    chunks = latents.view(2, 37, 4, 6)
    for m in range(4):
        distances = torch.cdist(chunks[:, :, m].reshape(-1, 6), quantizer.codebooks.codebook[m])
        brute = distances.argmin(-1).view(2, 37)
        assert torch.equal(codes[:, m], brute)
    decoded = quantizer.decode(codes)
    expected = torch.cat([quantizer.codebooks.codebook[m][codes[:, m]] for m in range(4)], dim=-1)
    assert torch.allclose(decoded, expected)


def test_straight_through_output_equals_codewords_and_passes_gradients():
    torch.manual_seed(0)
    quantizer = ProductQuantizer(2, 8, 4, use_ema=False, kmeans_init=False, dead_code_threshold=0.0)
    quantizer.codebooks.codebook.data.normal_()
    latents = torch.randn(1, 5, 4, requires_grad=True)
    out = quantizer(latents, torch.ones(1, 5))
    assert torch.allclose(out.quantized, quantizer.decode(out.codes))
    out.quantized.sum().backward()
    assert torch.allclose(latents.grad, torch.ones_like(latents))  # identity gradient
    assert out.commitment_loss > 0 and out.codebook_loss > 0


def test_residual_quantizer_stages_refine_the_residual():
    torch.manual_seed(0)
    rvq = ResidualQuantizer(3, 64, 8, use_ema=False, kmeans_init=False, dead_code_threshold=0.0)
    for stage, scale in zip(rvq.stages, (1.0, 0.3, 0.1)):
        stage.codebook.data.normal_(std=scale)
    latents = torch.randn(2, 40, 8)
    codes = rvq.encode(latents)
    assert codes.shape == (2, 3, 40)
    errors = []
    partial = torch.zeros_like(latents)
    for index, stage in enumerate(rvq.stages):
        partial = partial + stage.codebook[0][codes[:, index]]
        errors.append(float(((latents - partial) ** 2).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert torch.allclose(rvq.decode(codes), partial, atol=1e-6)


def test_statistics_match_hand_computed_values():
    stats = CodebookStatistics(num_codebooks=2, codebook_size=4)
    # frames: (0,1) (0,1) (1,1) (2,3); a fifth frame (3,3) is masked out
    codes = torch.tensor([[[0, 0, 1, 2, 3], [1, 1, 1, 3, 3]]])
    stats.update(codes, torch.tensor([[1, 1, 1, 1, 0]]))
    result = stats.compute()
    assert result["num_frames"] == 4
    assert result["codebook_usage"] == [3, 2]
    assert result["codebook_usage_fraction"] == [0.75, 0.5]
    # codebook 0: p = (1/2, 1/4, 1/4) -> H = 1.5 bits -> perplexity 2^1.5
    assert result["codebook_perplexity"][0] == pytest.approx(2**1.5)
    # codebook 1: p = (3/4, 1/4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert result["codebook_perplexity"][1] == pytest.approx(math.exp(h))
    # composite ids: 0+1*4=4 twice, 1+4=5, 2+12=14 -> same distribution as codebook 0
    assert result["composite_usage"] == 3
    assert result["composite_usage_fraction"] == 3 / 16
    assert result["composite_perplexity"] == pytest.approx(2**1.5)
    assert result["product_of_codebook_perplexities"] == pytest.approx(2**1.5 * math.exp(h))


def test_statistics_accumulate_across_batches_like_one_big_batch():
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(16, (3, 2, 20), generator=generator) for _ in range(4)]
    accumulated, merged, whole = (CodebookStatistics(2, 16) for _ in range(3))
    for batch in batches:
        accumulated.update(batch)
    for batch in batches[:2]:
        merged.update(batch)
    other = CodebookStatistics(2, 16)
    for batch in batches[2:]:
        other.update(batch)
    merged.merge(other)
    whole.update(torch.cat(batches))
    assert accumulated.compute() == whole.compute() == merged.compute()
    assert perplexity_from_counts(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity_from_counts(torch.zeros(3)) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        accumulated.update(torch.full((1, 2, 3), 16))


def test_kmeans_recovers_separated_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = (centers[torch.arange(300) % 3] + 0.1 * torch.randn(300, 2))[None]
    found = kmeans(samples, 3, 20, generator=torch.Generator().manual_seed(3))[0]
    distance = torch.cdist(found, centers).min(dim=0).values
    assert float(distance.max()) < 0.1


def test_training_forward_initialises_by_kmeans_updates_by_ema_and_restarts_dead_codes():
    torch.manual_seed(0)
    group = VectorQuantizerGroup(1, 8, 2, use_ema=True, kmeans_init=True, kmeans_iters=5, dead_code_threshold=0.5,
                                 dead_code_restart_interval=1, usage_decay=0.5)
    group.reset_codebook()
    group.train()
    data = torch.randn(1, 400, 1, 2) + 5.0  # far from the uniform(-1/8, 1/8) default init
    mask = torch.ones(1, 400)
    group(data, mask)
    assert bool(group.initialized)
    assert float(group.codebook.data.mean()) == pytest.approx(5.0, abs=0.5)
    # Move one codeword far away: nothing picks it, so its usage decays below threshold and it is re-seeded.
    group.codebook.data[0, 3] = torch.tensor([100.0, 100.0])
    group.ema_embed_sum[0, 3] = torch.tensor([100.0, 100.0])
    for _ in range(10):  # usage halves each step from ~50 per batch: below 0.5 after ~7 steps
        group(data, mask)
    assert float(group.codebook.data[0, 3].norm()) < 20.0
    assert int(group.steps) == 11
    assert group.codebook.requires_grad is False  # EMA codebooks are not trained by the optimiser


def _hard_perplexity(group: VectorQuantizerGroup, latents: torch.Tensor) -> float:
    codes = group.search(latents)[:, 0]
    return perplexity_from_counts(torch.bincount(codes, minlength=group.codebook_size))


def test_entropy_loss_spreads_collapsed_latents_over_the_codebook():
    torch.manual_seed(0)
    group = VectorQuantizerGroup(1, 16, 4, kmeans_init=False)
    group.codebook.data.copy_(torch.randn(1, 16, 4) * 2)
    # 512 latents collapsed around 3 of the 16 codewords (index collapse)
    centres = group.codebook.data[0, torch.randint(3, (512,))]
    latents = (centres + 0.5 * torch.randn(512, 4))[:, None, :].requires_grad_(True)
    before_loss = float(group.entropy_loss(latents))
    before = _hard_perplexity(group, latents.detach())
    assert before < 4.5 and -1.0 <= before_loss <= 1.0
    optimizer = torch.optim.Adam([latents], lr=0.01)
    for _ in range(200):
        loss = group.entropy_loss(latents)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _hard_perplexity(group, latents.detach())
    assert after > before + 2.0, (before, after)  # measured 3.2 -> 5.8 of 16 codewords
    assert group.codebook.grad is None  # the loss moves the encoder side only


def test_entropy_loss_is_scale_free_and_bounded():
    torch.manual_seed(0)
    group = VectorQuantizerGroup(2, 32, 8, kmeans_init=False)
    group.codebook.data.copy_(torch.randn(2, 32, 8))
    latents = torch.randn(300, 2, 8)
    loss = group.entropy_loss(latents)
    group.codebook.data.mul_(10.0)
    assert float(group.entropy_loss(latents * 10.0)) == pytest.approx(float(loss), abs=1e-5)
    assert -1.0 <= float(loss) <= 1.0


def test_balanced_pca_rotation_decorrelates_and_balances_subspaces():
    torch.manual_seed(0)
    variances = torch.tensor([64.0, 32.0, 16.0, 8.0, 4.0, 2.0, 1.0, 0.5])
    mixing = torch.linalg.qr(torch.randn(8, 8))[0]
    latents = (torch.randn(20000, 8) * variances.sqrt()) @ mixing.T
    rotation = balanced_pca_rotation(latents, num_subspaces=2)
    assert torch.allclose(rotation.T @ rotation, torch.eye(8), atol=1e-5)
    covariance = torch.cov((latents @ rotation).T)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    assert float(off_diagonal.abs().max()) < 0.05 * float(covariance.diagonal().max())
    log_products = covariance.diagonal().log().view(2, 4).sum(1)
    # a plain PCA split would put 64*32*16*8 in one sub-space and 4*2*1*0.5 in the other (log ratio 8.3)
    assert float((log_products[0] - log_products[1]).abs()) < 1.5


def test_opq_rotation_is_refined_by_procrustes_and_stays_consistent_for_encode_decode():
    torch.manual_seed(0)
    quantizer = ProductQuantizer(2, 8, 4, subspace_rotation="opq", rotation_update_interval=1, kmeans_init=False)
    true_rotation = torch.linalg.qr(torch.randn(4, 4))[0]
    latents = torch.randn(500, 4)
    quantizer._update_rotation(latents, latents @ true_rotation)
    assert torch.allclose(quantizer.rotation, true_rotation, atol=1e-4)

    quantizer = ProductQuantizer(2, 16, 8, subspace_rotation="opq", rotation_update_interval=2).train()
    batch = torch.randn(4, 50, 8) * torch.linspace(3, 0.1, 8)
    mask = torch.ones(4, 50)
    first = quantizer(batch, mask)
    pca = quantizer.rotation.clone()
    assert bool(quantizer.rotation_initialized) and not torch.allclose(pca, torch.eye(8))
    for _ in range(3):
        quantizer(batch, mask)
    assert not torch.allclose(quantizer.rotation, pca)  # Procrustes updates moved it
    assert torch.allclose(quantizer.rotation @ quantizer.rotation.T, torch.eye(8), atol=1e-5)
    quantizer.eval()
    codes = quantizer.encode(batch)
    output = quantizer(batch, mask)
    assert torch.equal(codes, output.codes)
    assert torch.allclose(quantizer.decode(codes), output.quantized, atol=1e-5)
    assert first.codes.shape == (4, 2, 50)


def _restart_counts(mode: str, threshold: float, codebook_size: int = 1024, frames: int = 256, steps: int = 200):
    """Codewords re-seeded by dead-code restarts when every codeword is used equally often (uniform data)."""
    torch.manual_seed(0)
    group = VectorQuantizerGroup(1, codebook_size, 4, use_ema=False, kmeans_init=False, dead_code_threshold=threshold,
                                 dead_code_threshold_mode=mode, dead_code_restart_interval=50, usage_decay=0.99)
    group.reset_codebook()
    group.codebook.data.copy_(torch.randn(1, codebook_size, 4))
    start = group.codebook.data.clone()
    group.train()
    for _ in range(steps):
        pick = torch.randint(codebook_size, (frames,))
        group(start[0, pick][None, :, None, :] + 1e-3 * torch.randn(1, frames, 1, 4), torch.ones(1, frames))
    return int((group.codebook.data != start).any(-1).sum())


def test_relative_dead_code_threshold_does_not_cap_a_large_codebook():
    # 1,024 codewords, 256 frames per batch, every codeword equally likely: each is used 0.25 times per batch.
    # An absolute threshold of 1 use per batch declares all of them dead; the relative default restarts none.
    assert _restart_counts("absolute", 1.0) > 1000
    assert _restart_counts("relative", 0.2) == 0


def test_relative_usage_does_not_depend_on_batch_size_or_process_count():
    torch.manual_seed(0)
    codebook = torch.randn(1, 16, 2)
    latents = codebook[0, torch.randint(6, (120,))][None, :, None, :]  # 10 of 16 codewords never used
    usage = {}
    for mode in ("relative", "absolute"):
        for copies in (1, 4):  # 4x the frames per batch (bigger batch, or 4 data-parallel processes summed)
            group = VectorQuantizerGroup(1, 16, 2, use_ema=False, kmeans_init=False, dead_code_threshold=0.2,
                                         dead_code_threshold_mode=mode, dead_code_restart_interval=1000)
            group.reset_codebook()
            group.codebook.data.copy_(codebook)
            group.train()
            batch = latents.repeat(1, copies, 1, 1)
            for _ in range(30):
                group(batch, torch.ones(1, batch.shape[1]))
            usage[mode, copies] = group.usage_ema.clone()
    torch.testing.assert_close(usage["relative", 1], usage["relative", 4])
    assert float(usage["relative", 1].mean()) == pytest.approx(1.0, abs=0.05)  # in units of the uniform share
    # Absolute counts grow with the batch: the used codewords' usage is ~4x larger.
    used = usage["absolute", 1] > 1.5
    assert bool((usage["absolute", 4][used] > 3 * usage["absolute", 1][used]).all())
    with pytest.raises(ValueError, match="dead_code_threshold_mode"):
        VectorQuantizerGroup(1, 16, 2, dead_code_threshold_mode="per_batch")


# ---- issue 13: remedies that scale with the codebook size -----------------------------------------------------------


def _train_forward(group, latents, mask=None):
    """One training forward of a VectorQuantizerGroup on (n, G, d) latents as a (1, n, G, d) batch."""
    mask = torch.ones(1, latents.shape[0]) if mask is None else mask
    return group(latents[None], mask)


def test_ema_statistics_without_one_hot_match_the_dense_computation():
    torch.manual_seed(0)
    group = VectorQuantizerGroup(2, 50, 3, dead_code_threshold=0.0, kmeans_init=False)
    group.reset_codebook()
    group.initialized.fill_(True)
    latents, weights = torch.randn(40, 2, 3), (torch.rand(40) > 0.3).float()
    codes = group.search(latents)
    one_hot = torch.nn.functional.one_hot(codes, 50).float() * weights[:, None, None]
    expected_sums = 0.99 * group.ema_embed_sum + 0.01 * torch.einsum("ngk,ngd->gkd", one_hot, latents)
    expected_sizes = 0.99 * group.ema_cluster_size + 0.01 * one_hot.sum(0)
    group._update_statistics(latents, codes, weights)
    assert torch.allclose(group.ema_embed_sum, expected_sums, atol=1e-6)
    assert torch.allclose(group.ema_cluster_size, expected_sizes, atol=1e-6)


def test_replay_buffer_restart_revives_more_codewords_than_one_batch_has_frames():
    torch.manual_seed(0)
    frames_per_batch, size = 32, 512
    group = VectorQuantizerGroup(1, size, 4, kmeans_init=False, dead_code_threshold=0.5, dead_code_restart_interval=20,
                                 usage_decay=0.8, dead_code_replay_frames=1024)
    group.reset_codebook()
    group.train()
    for _ in range(20):  # 20 batches of 32 distinct frames: 640 frames remembered; restart at step 20
        _train_forward(group, torch.randn(frames_per_batch, 1, 4))
    revived = {tuple(row) for row in group.codebook.data[0].tolist()}
    # every codeword but the few this usage kept alive was restarted, each with its own frame (no duplicates)
    assert len(revived) > 10 * frames_per_batch
    batch_only = VectorQuantizerGroup(1, size, 4, kmeans_init=False, dead_code_threshold=0.5,
                                      dead_code_restart_interval=20, usage_decay=0.8)
    batch_only.reset_codebook()
    batch_only.train()
    for _ in range(20):
        _train_forward(batch_only, torch.randn(frames_per_batch, 1, 4))
    # the current-batch rule: at most one batch of distinct frames (plus the few codewords that were alive)
    assert len({tuple(row) for row in batch_only.codebook.data[0].tolist()}) < 2 * frames_per_batch


def test_replay_buffer_keeps_only_valid_frames_of_the_last_batches():
    group = VectorQuantizerGroup(1, 8, 2, kmeans_init=False, dead_code_threshold=0.0, dead_code_replay_frames=10)
    group.reset_codebook()
    group.train()
    for value in range(4):  # 4 batches of 4 frames, the last frame of each is padding; the ring holds 10 rows
        latents = torch.full((4, 1, 2), float(value))
        _train_forward(group, latents, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    stored = group.replay_latents[group.replay_weights > 0][:, 0, 0]
    assert sorted(set(stored.tolist())) == [1.0, 2.0, 3.0] and len(stored) == 7  # batch 0 overwritten, padding out
    assert "replay_latents" not in group.state_dict()  # training state only


def test_kmeans_init_waits_for_enough_distinct_frames_and_passes_latents_through_meanwhile():
    torch.manual_seed(0)
    # kmeans_iters=0: the codebook is exactly k-means' starting centroids, so we can see which frames it drew
    group = VectorQuantizerGroup(1, 64, 2, use_ema=False, kmeans_init=True, kmeans_iters=0, kmeans_init_min_frames=100,
                                 dead_code_threshold=0.0)
    group.reset_codebook()
    group.train()
    seen = []
    for step in range(4):  # 30 frames per batch: initialised at the 4th batch (120 frames >= 100)
        latents = torch.randn(30, 1, 2)
        seen.append(latents[:, 0])
        codewords, codes = _train_forward(group, latents)
        if step < 3:
            assert not bool(group.initialized)
            assert torch.equal(codewords[0], latents) and not codes.any()  # pass-through
    assert bool(group.initialized) and group.last_init_frames.shape[0] == 120
    batch_of = {tuple(frame): index for index, batch in enumerate(seen) for frame in batch.tolist()}
    codewords = [tuple(c) for c in group.codebook.data[0].tolist()]
    assert len(set(codewords)) == 64 and all(c in batch_of for c in codewords)  # 64 distinct frames
    assert len({batch_of[c] for c in codewords}) == 4  # drawn from every batch, not only the last


def test_kmeans_starts_from_distinct_samples_and_is_chunk_invariant():
    torch.manual_seed(0)
    samples = torch.randn(1, 300, 3)
    first = kmeans(samples, 300, 0, generator=torch.Generator().manual_seed(0))  # 0 iterations: the start
    assert len({tuple(c) for c in first[0].tolist()}) == 300  # without replacement
    one = kmeans(samples, 20, 10, generator=torch.Generator().manual_seed(1))
    chunked = kmeans(samples, 20, 10, generator=torch.Generator().manual_seed(1), rows_per_chunk=7)
    assert torch.equal(one, chunked)


def test_residual_stages_are_initialised_on_residuals_of_the_same_frames():
    torch.manual_seed(0)
    rvq = ResidualQuantizer(2, 16, 4, kmeans_init=True, kmeans_init_min_frames=60, dead_code_threshold=0.0)
    for stage in rvq.stages:
        stage.reset_codebook()
    rvq.train()
    for step in range(3):  # 25 frames per batch: stage 0 initialises at batch 3 and seeds stage 1 at once
        out = rvq(torch.randn(1, 25, 4), torch.ones(1, 25))
    assert all(bool(stage.initialized) for stage in rvq.stages)
    assert rvq.stages[1].codebook.abs().max() < rvq.stages[0].codebook.abs().max() + 1  # residual scale, not zero
    assert rvq.stages[1].codebook.abs().sum() > 0
    assert int(rvq.stages[0].steps) == int(rvq.stages[1].steps) == 3
    assert out.codes.shape == (1, 2, 25)


def test_restarts_stop_after_the_last_restart_step():
    torch.manual_seed(0)
    group = VectorQuantizerGroup(1, 256, 2, use_ema=False, kmeans_init=False, dead_code_threshold=0.5,
                                 dead_code_restart_interval=5, usage_decay=0.7, dead_code_restart_last_step=10,
                                 dead_code_replay_frames=64)
    group.reset_codebook()
    group.train()
    snapshots = {}
    for step in range(1, 31):
        _train_forward(group, torch.randn(16, 1, 2) + 5.0)  # far from the tiny initial codewords: most stay dead
        snapshots[step] = group.codebook.data.clone()
    assert group.restarts_allowed(10) and not group.restarts_allowed(15) and not group.restarts_allowed(11)
    assert not torch.equal(snapshots[9], snapshots[10])  # restarted at step 10
    dead_after = (group.usage_ema < 0.5)
    assert dead_after.any()  # dead codewords remain ...
    # ... but after step 10 codewords only move by EMA: never-used codewords keep their exact values
    unused = torch.isclose(snapshots[11], snapshots[30]).all(-1)
    assert unused.sum() > 0 and torch.equal(snapshots[11][unused], snapshots[30][unused])


def test_usage_window_in_frames_does_not_depend_on_batch_size():
    results = []
    for frames_per_batch in (10, 40):
        group = VectorQuantizerGroup(1, 4, 1, kmeans_init=False, dead_code_threshold=0.0, usage_window_frames=200)
        group.reset_codebook()
        group.initialized.fill_(True)
        group.usage_ema.fill_(1.0)
        group.train()
        group.codebook.data[:] = torch.tensor([[[0.0], [10.0], [20.0], [30.0]]])
        for _ in range(400 // frames_per_batch):  # the same 400 frames, all on codeword 0
            group._update_statistics(torch.zeros(frames_per_batch, 1, 1),
                                     torch.zeros(frames_per_batch, 1, dtype=torch.long), torch.ones(frames_per_batch))
        results.append(group.usage_ema.clone())
    # unused codewords decayed by exp(-400 / 200) whatever the batch size
    assert torch.allclose(results[0][0, 1:], torch.full((3,), math.exp(-2.0)), rtol=1e-4)
    assert torch.allclose(results[0], results[1], rtol=1e-4)


def test_new_remedy_flags_reject_negative_values():
    for flag in ("kmeans_init_min_frames", "dead_code_replay_frames", "usage_window_frames",
                 "dead_code_restart_last_step"):
        with pytest.raises(ValueError, match=flag):
            VectorQuantizerGroup(1, 4, 2, **{flag: -1})
