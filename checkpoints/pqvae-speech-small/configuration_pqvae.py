# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Configuration of the PQ-VAE speech tokenizer (Guo et al., arXiv 2406.02940).

This file is part of the Hub payload: it imports only the standard library and transformers.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

QUANTIZER_TYPES = ("pq", "vq", "rvq")
DEAD_CODE_THRESHOLD_MODES = ("relative", "absolute")
VOCODERS = ("neural", "griffin_lim", "none")
VOCODER_MAGNITUDE_PRIORS = ("none", "mel_pseudo_inverse")
MEL_VOCODERS = ("none", "neural")
SUBSPACE_ROTATIONS = ("none", "opq")


@strict
class PQVAEConfig(PreTrainedConfig):
    r"""
    Configuration of a [`PQVAEModel`]: a fixed log-mel front-end, a 1-D ConvNeXt encoder, a product quantizer and a
    1-D ConvNeXt decoder that predicts the log-mel spectrogram (dual-decoding trained).

    Audio front-end:
        sampling_rate (`int`, defaults to 16000): rate of the waveform the model expects, in Hz.
        n_fft (`int`, defaults to 1024): STFT size of the mel front-end.
        hop_length (`int`, defaults to 256): STFT hop; one token is produced per hop (`frame_rate = sampling_rate /
            hop_length`).
        win_length (`int`, *optional*): STFT window length, defaults to `n_fft`.
        num_mel_bins (`int`, defaults to 80): number of mel bands.
        mel_fmin (`float`, defaults to 0.0) / mel_fmax (`float`, *optional*): mel band edges in Hz; `None` is
            Nyquist.
        log_floor (`float`, defaults to 1e-5): magnitudes are clamped to this before the natural log.

    Encoder / decoder:
        hidden_size (`int`, defaults to 256): channels of the ConvNeXt stacks.
        intermediate_size (`int`, defaults to 768): channels inside each ConvNeXt block.
        num_encoder_layers / num_decoder_layers (`int`, defaults to 4): ConvNeXt blocks per stack.
        kernel_size (`int`, defaults to 7): depthwise kernel of every block (odd, keeps frames aligned).
        layer_norm_eps (`float`, defaults to 1e-6).
        initializer_range (`float`, defaults to 0.02): std of the normal init of conv/linear weights.

    Quantizer:
        quantizer_type (`str`, defaults to `"pq"`): `"pq"` product quantization (the paper's method), `"vq"` one
            codebook (needs `num_codebooks=1`), `"rvq"` residual VQ with `num_codebooks` stages (baseline).
        num_codebooks (`int`, defaults to 2): M, number of sub-codebooks (PQ) or stages (RVQ).
        codebook_size (`int`, defaults to 256): N, codewords per sub-codebook.
        codebook_dim (`int`, defaults to 64): D, dimension of the quantized latent. PQ splits it into M chunks of
            D / M; RVQ quantizes all D dimensions at every stage.
        commitment_weight (`float`, defaults to 0.25): beta of the commitment loss.
        codebook_loss_weight (`float`, defaults to 1.0): weight of the codebook loss (unused with EMA updates).
        dual_decoding_weight (`float`, defaults to 1.0): lambda of the reconstruction loss from the continuous
            encoder output (dual decoding); 0 turns dual decoding off.
        use_cosine_codebook (`bool`, defaults to `False`): l2-normalise latents and codewords before the search.
        use_ema (`bool`, defaults to `True`): update codewords by exponential moving averages instead of gradients.
        ema_decay (`float`, defaults to 0.99).
        kmeans_init (`bool`, defaults to `True`): initialise each codebook by k-means on the first training batch.
        kmeans_iters (`int`, defaults to 10).
        dead_code_threshold (`float`, defaults to 0.2): a codeword whose moving-average usage drops below this is
            re-seeded from a random encoder output of the current batch; 0 disables restarts. The unit depends on
            `dead_code_threshold_mode`.
        dead_code_threshold_mode (`str`, defaults to `"relative"`): `"relative"` measures usage against the expected
            uses per codeword per batch (valid frames of the global batch / `codebook_size`), so 0.2 restarts a
            codeword that gets less than a fifth of the uniform share. The same config then behaves the same with
            any batch size, crop length or number of processes, and a large codebook is not capped at the number of
            frames per batch. `"absolute"` compares the moving-average number of assignments per global batch with
            the threshold (the only behaviour before this field existed): with N codewords and F valid frames per
            batch it equals `"relative"` with threshold * N / F, and it declares every codeword dead once N > F /
            threshold. A config.json saved without this field loads as `"absolute"`, keeping its meaning: the
            shipped checkpoint's `dead_code_threshold=1.0` is 1 assignment per batch, which in its training recipe
            (16 x 2 s crops, about 1,430 valid frames per batch, N = 256) is about 0.18 relative; the relative
            default 0.2 reproduces that at that scale.
        dead_code_restart_interval (`int`, defaults to 50): training steps between dead-code restarts.
        usage_decay (`float`, defaults to 0.99): decay of the moving-average usage counts.
        dead_code_replay_frames (`int`, defaults to 0): restart dead codewords from a ring buffer of this many recent
            encoder outputs (spanning many batches), each revived codeword getting a distinct frame (drawn without
            replacement), instead of from the current batch. Why: a batch of F frames can give at most F distinct
            replacements, so with the current-batch rule a codebook much larger than F (65,536 codewords against
            ~2,000 frames per 16 x 2 s batch) stays capped near F live codewords by construction, whatever the
            method. 0 keeps the current-batch rule. Training state only: not saved with the model.
        usage_window_frames (`int`, defaults to 0): when > 0, the usage average decays by exp(-F / this) per batch of
            F valid frames instead of by `usage_decay`, so it spans about this many frames whatever the batch size.
            Why: a codeword used at the uniform rate gets window / N uses per window; with a window of ~100 batches
            and N = 65,536 that is about 2, so the dead-code rule would restart many healthy codewords by chance.
            Scale it with N (e.g. >= 4 N frames).
        kmeans_init_min_frames (`int`, defaults to 0): with `kmeans_init`, collect at least this many valid frames over
            the first batches before running k-means (the quantizer passes the latents through until then; residual
            stages are then seeded by k-means on the residuals of the same frames). Why: k-means on one batch of F
            frames gives a codebook larger than F duplicated frames (sampled with replacement); with at least N
            frames the centroids start at N distinct frames. 0 initialises on the first batch.
        dead_code_restart_last_step (`int`, defaults to 0): no dead-code restarts after this training step (0: restarts
            never stop). Why: a restart copies encoder outputs into the codebook; restarts right before evaluation
            make the usage measured afterwards describe fresh copies of the last batch, not trained codewords.
        entropy_loss_weight (`float`, defaults to 0.0): weight of a code-balancing loss on soft assignments
            (softmax of minus squared distances over each codebook): per-frame entropy minus the entropy of the
            batch-averaged assignment, divided by log N. It pushes the encoder to spread frames over all codewords
            (higher perplexity); 0 turns it off.
        entropy_temperature (`float`, defaults to 1.0): softmax temperature of that loss, relative to the batch's
            mean squared distance to the nearest codeword (so it does not depend on the latent scale).
        subspace_rotation (`str`, defaults to `"none"`): `"opq"` learns an orthogonal rotation R applied to the
            latent before the product split, as in optimised product quantisation: R starts from a PCA whose
            eigen-directions are dealt out so every sub-space gets equal variance and decorrelated coordinates, then
            is refined every `rotation_update_interval` steps by orthogonal Procrustes towards the codewords. The
            decoder works in the rotated space, so encode/decode need nothing extra. PQ only.
        rotation_update_interval (`int`, defaults to 50): training steps between Procrustes updates of R.

    Losses:
        mel_l1_weight / mel_l2_weight (`float`, defaults to 1.0 / 0.0): reconstruction loss on log-mel, on valid
            frames only.

    Vocoder:
        vocoder (`str`, defaults to `"griffin_lim"`): how `decode` turns log-mel into a waveform: `"neural"` (a
            Vocos-style ConvNeXt + inverse-STFT vocoder stored with the model), `"griffin_lim"` (no weights), or
            `"none"` (log-mel only).
        vocoder_hidden_size / vocoder_intermediate_size / vocoder_num_layers (`int`, defaults to 256 / 768 / 6):
            size of the neural vocoder's ConvNeXt backbone.
        vocoder_magnitude_prior (`str`, defaults to `"none"`): `"mel_pseudo_inverse"` makes the neural vocoder predict
            a log-magnitude correction to the mel filterbank's pseudo-inverse (Griffin-Lim's magnitude) instead of
            the whole log-magnitude; `"none"` predicts it directly.
        vocoder_phase_refinement_iters (`int`, defaults to 0): Griffin-Lim projections unrolled inside the neural
            vocoder after its network: starting from the predicted magnitude and phase, each one goes to the waveform
            and back and keeps the new phase with the predicted magnitude, so the output's STFT becomes consistent.
            Weight-free but differentiable, so a vocoder trained with them learns a magnitude and phase that they
            refine well (as in Deep Griffin-Lim Iteration, Masuyama et al. 2019). 0 turns them off.
        mel_vocoder (`str`, defaults to `"none"`): `"neural"` adds a second neural vocoder (`PQVAEModel.mel_vocoder`,
            the same size as `vocoder`) for log-mels computed from real audio rather than decoded from tokens, e.g.
            the mels a text-to-speech model predicts; `PQVAEModel.vocode_mel` uses it (`decode` never does). A
            decoder regresses a smoothed mel from tokens, and the vocoder that renders that best (fine-tuned on
            decoded mels, its own phase) is not the one that renders a true mel best (magnitude prior and Griffin-Lim
            projections), so each input gets its own. `"none"`: `vocode_mel` uses `vocoder`.
        mel_vocoder_magnitude_prior (`str`, defaults to `"none"`) / mel_vocoder_phase_refinement_iters (`int`,
            defaults to 0): `vocoder_magnitude_prior` and `vocoder_phase_refinement_iters` of the mel vocoder.
        griffin_lim_iters (`int`, defaults to 32).
        decoded_mel_contrast (`float`, defaults to 1.0): global-variance post-filter on the log-mel decoded from
            tokens, before the vocoder: each mel band's deviation from its mean over the example's valid frames is
            multiplied by this factor (see `PQVAEModel.postfilter_mel`). A decoder trained with an L1 loss regresses
            towards the mean and flattens the mel's contrast; a factor slightly above 1 restores some of it. 1.0 turns
            it off. It acts on decoded mels only (never on a mel computed from audio) and only at inference.
    """

    model_type = "pqvae"

    sampling_rate: int = 16_000
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int | None = None
    num_mel_bins: int = 80
    mel_fmin: float = 0.0
    mel_fmax: float | None = None
    log_floor: float = 1e-5

    hidden_size: int = 256
    intermediate_size: int = 768
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    kernel_size: int = 7
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    quantizer_type: str = "pq"
    num_codebooks: int = 2
    codebook_size: int = 256
    codebook_dim: int = 64
    commitment_weight: float = 0.25
    codebook_loss_weight: float = 1.0
    dual_decoding_weight: float = 1.0
    use_cosine_codebook: bool = False
    use_ema: bool = True
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_threshold: float = 0.2
    dead_code_threshold_mode: str = "relative"
    dead_code_restart_interval: int = 50
    usage_decay: float = 0.99
    dead_code_replay_frames: int = 0
    usage_window_frames: int = 0
    kmeans_init_min_frames: int = 0
    dead_code_restart_last_step: int = 0
    entropy_loss_weight: float = 0.0
    entropy_temperature: float = 1.0
    subspace_rotation: str = "none"
    rotation_update_interval: int = 50

    mel_l1_weight: float = 1.0
    mel_l2_weight: float = 0.0

    vocoder: str = "griffin_lim"
    vocoder_hidden_size: int = 256
    vocoder_intermediate_size: int = 768
    vocoder_num_layers: int = 6
    vocoder_magnitude_prior: str = "none"
    vocoder_phase_refinement_iters: int = 0
    mel_vocoder: str = "none"
    mel_vocoder_magnitude_prior: str = "none"
    mel_vocoder_phase_refinement_iters: int = 0
    griffin_lim_iters: int = 32
    decoded_mel_contrast: float = 1.0

    def __post_init__(self, **kwargs):
        if self.win_length is None:
            self.win_length = self.n_fft
        super().__post_init__(**kwargs)
        # Raised here rather than in a `@strict` class validator so callers get a plain ValueError.
        self._validate_pqvae()

    def _validate_pqvae(self):
        """Every invalid combination raises a ValueError naming the fields involved and a fix."""
        positive = {
            "sampling_rate": self.sampling_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "win_length": self.win_length,
            "num_mel_bins": self.num_mel_bins,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "kernel_size": self.kernel_size,
            "num_codebooks": self.num_codebooks,
            "codebook_dim": self.codebook_dim,
            "kmeans_iters": self.kmeans_iters,
            "dead_code_restart_interval": self.dead_code_restart_interval,
            "rotation_update_interval": self.rotation_update_interval,
            "griffin_lim_iters": self.griffin_lim_iters,
            "vocoder_hidden_size": self.vocoder_hidden_size,
            "vocoder_intermediate_size": self.vocoder_intermediate_size,
            "vocoder_num_layers": self.vocoder_num_layers,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        for name in ("vocoder_phase_refinement_iters", "mel_vocoder_phase_refinement_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 turns the refinement off), got {getattr(self, name)}.")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd so frames stay aligned, got {self.kernel_size}.")
        if self.win_length > self.n_fft:
            raise ValueError(f"`win_length` ({self.win_length}) must be <= `n_fft` ({self.n_fft}).")
        if self.hop_length > self.win_length:
            raise ValueError(
                f"`hop_length` ({self.hop_length}) must be <= `win_length` ({self.win_length}); samples between"
                " windows would be ignored."
            )
        nyquist = self.sampling_rate / 2
        fmax = nyquist if self.mel_fmax is None else self.mel_fmax
        if not 0 <= self.mel_fmin < fmax <= nyquist:
            raise ValueError(
                f"Mel band edges must satisfy 0 <= mel_fmin < mel_fmax <= sampling_rate / 2 ({nyquist}), got"
                f" mel_fmin={self.mel_fmin}, mel_fmax={self.mel_fmax}."
            )
        if self.num_mel_bins > self.n_fft // 2 + 1:
            raise ValueError(
                f"`num_mel_bins` ({self.num_mel_bins}) exceeds the {self.n_fft // 2 + 1} STFT bins of n_fft={self.n_fft}."
            )
        if self.log_floor <= 0:
            raise ValueError(f"`log_floor` must be > 0, got {self.log_floor}.")
        if self.quantizer_type not in QUANTIZER_TYPES:
            raise ValueError(f"`quantizer_type` must be one of {QUANTIZER_TYPES}, got {self.quantizer_type!r}.")
        if self.codebook_size < 2:
            raise ValueError(f"`codebook_size` (N) must be >= 2, got {self.codebook_size}.")
        if self.quantizer_type == "vq" and self.num_codebooks != 1:
            raise ValueError(
                f"quantizer_type='vq' is a single codebook: set num_codebooks=1 (got {self.num_codebooks}), or use"
                " quantizer_type='pq' for several sub-codebooks."
            )
        if self.composite_codebook_size > 2**63 - 1:
            raise ValueError(
                f"codebook_size ** num_codebooks = {self.codebook_size}^{self.num_codebooks} composite ids do not fit"
                " in int64 (the dtype of codes and composite ids); use fewer or smaller codebooks."
            )
        if self.quantizer_type == "rvq" and self.use_cosine_codebook:
            raise ValueError(
                "use_cosine_codebook=True is not defined for quantizer_type='rvq' (residuals are not unit vectors):"
                " set use_cosine_codebook=False, or use quantizer_type='pq' / 'vq'."
            )
        if self.quantizer_type in ("pq", "vq") and self.codebook_dim % self.num_codebooks != 0:
            raise ValueError(
                f"Product quantization splits codebook_dim={self.codebook_dim} into num_codebooks={self.num_codebooks}"
                " equal chunks: codebook_dim must be divisible by num_codebooks."
            )
        for name in ("commitment_weight", "codebook_loss_weight", "dual_decoding_weight", "mel_l1_weight",
                     "mel_l2_weight", "dead_code_threshold", "entropy_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in ("dead_code_replay_frames", "usage_window_frames", "kmeans_init_min_frames",
                     "dead_code_restart_last_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 turns it off), got {getattr(self, name)}.")
        if self.mel_l1_weight == 0 and self.mel_l2_weight == 0:
            raise ValueError("At least one of `mel_l1_weight` and `mel_l2_weight` must be > 0.")
        for name in ("ema_decay", "usage_decay"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in (0, 1), got {getattr(self, name)}.")
        if self.decoded_mel_contrast <= 0:
            raise ValueError(f"`decoded_mel_contrast` must be > 0 (1.0 turns the post-filter off), got"
                             f" {self.decoded_mel_contrast}.")
        if self.entropy_temperature <= 0:
            raise ValueError(f"`entropy_temperature` must be > 0, got {self.entropy_temperature}.")
        if self.subspace_rotation not in SUBSPACE_ROTATIONS:
            raise ValueError(
                f"`subspace_rotation` must be one of {SUBSPACE_ROTATIONS}, got {self.subspace_rotation!r}."
            )
        if self.subspace_rotation != "none" and self.quantizer_type != "pq":
            raise ValueError(
                f"subspace_rotation={self.subspace_rotation!r} rotates the latent before the product split; it needs"
                f" quantizer_type='pq' (got {self.quantizer_type!r}). Set subspace_rotation='none'."
            )
        if self.dead_code_threshold_mode not in DEAD_CODE_THRESHOLD_MODES:
            raise ValueError(
                f"`dead_code_threshold_mode` must be one of {DEAD_CODE_THRESHOLD_MODES}, got"
                f" {self.dead_code_threshold_mode!r}."
            )
        if self.vocoder not in VOCODERS:
            raise ValueError(f"`vocoder` must be one of {VOCODERS}, got {self.vocoder!r}.")
        for name in ("vocoder_magnitude_prior", "mel_vocoder_magnitude_prior"):
            if getattr(self, name) not in VOCODER_MAGNITUDE_PRIORS:
                raise ValueError(f"`{name}` must be one of {VOCODER_MAGNITUDE_PRIORS}, got {getattr(self, name)!r}.")
        if self.mel_vocoder not in MEL_VOCODERS:
            raise ValueError(f"`mel_vocoder` must be one of {MEL_VOCODERS}, got {self.mel_vocoder!r}: 'neural' adds a"
                             " vocoder for true mels, 'none' renders them with `vocoder`.")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        if "dead_code_threshold" in config_dict and "dead_code_threshold_mode" not in config_dict:
            # Saved before `dead_code_threshold_mode` existed, when the threshold was a count per global batch.
            config_dict = {**config_dict, "dead_code_threshold_mode": "absolute"}
        return super().from_dict(config_dict, **kwargs)

    @property
    def frame_rate(self) -> float:
        """Tokens (frames) per second of audio."""
        return self.sampling_rate / self.hop_length

    @property
    def codebook_subdim(self) -> int:
        """Dimension each sub-codebook quantizes (D / M for PQ and VQ, D for RVQ)."""
        return self.codebook_dim if self.quantizer_type == "rvq" else self.codebook_dim // self.num_codebooks

    @property
    def composite_codebook_size(self) -> int:
        """N^M: size of the codebook that the M sub-codes compose."""
        return self.codebook_size**self.num_codebooks

    @property
    def bits_per_frame(self) -> float:
        return self.num_codebooks * math.log2(self.codebook_size)

    @property
    def bits_per_second(self) -> float:
        return self.bits_per_frame * self.frame_rate

    def num_frames(self, num_samples: int) -> int:
        """Frames (tokens) the model produces for `num_samples` samples: a centred STFT gives one per hop, plus one."""
        return num_samples // self.hop_length + 1


__all__ = ["PQVAEConfig"]
