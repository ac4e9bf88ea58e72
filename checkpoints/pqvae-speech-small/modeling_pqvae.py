# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""PQ-VAE speech tokenizer: log-mel front-end -> ConvNeXt encoder -> product quantizer -> ConvNeXt decoder.

Implements "Addressing Index Collapse of Large-Codebook Speech Tokenizer with Dual-Decoding Product-Quantized VAE"
(Guo et al., arXiv 2406.02940). Part of the Hub payload: imports torch, transformers and its own relative modules.

Shapes: B batch, T samples, F frames (= T // hop_length + 1), C hidden channels, D latent dim, M codebooks,
N codewords per codebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedAudioTokenizerBase
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_pqvae import PQVAEConfig
from .vocoder_pqvae import (
    GRIFFIN_LIM_MOMENTUM,
    PQVAEVocoder,
    VocoderConvNeXtBlock,
    griffin_lim_projections,
    mel_filterbank,
    mel_pseudo_inverse,
    mel_pseudo_inverse_magnitude,
)
from .quantization_pqvae import (
    ProductQuantizer,
    ResidualQuantizer,
    VectorQuantizerGroup,
    codes_to_composite,
    composite_to_codes,
    float32_region,
    keep_float32,
)

# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PQVAEEncoderOutput(ModelOutput):
    r"""
    audio_codes (`torch.LongTensor` of shape `(batch_size, num_codebooks, num_frames)`):
        Discrete codes, one per sub-codebook and frame. Frames past an example's length (see `frame_mask`) hold codes
        of padding and must be ignored.
    frame_mask (`torch.LongTensor` of shape `(batch_size, num_frames)`):
        1 for frames that belong to the example, 0 for frames produced from padding.
    """

    audio_codes: torch.LongTensor | None = None
    frame_mask: torch.LongTensor | None = None


@dataclass
class PQVAEDecoderOutput(ModelOutput):
    r"""
    audio_values (`torch.FloatTensor` of shape `(batch_size, 1, num_samples)`, *optional*):
        Reconstructed waveform (None when `config.vocoder == "none"` or `return_waveform=False`). With a
        `padding_mask`, it has the mask's length and is zero past each example's length.
    mel (`torch.FloatTensor` of shape `(batch_size, num_mel_bins, num_frames)`):
        Reconstructed natural-log mel spectrogram: the decoder's estimate (the vocoder renders it after
        `PQVAEModel.postfilter_mel`).
    """

    audio_values: torch.FloatTensor | None = None
    mel: torch.FloatTensor | None = None


@dataclass
class PQVAEOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`): reconstruction_loss + dual_decoding_weight * dual_reconstruction_loss +
        codebook_loss_weight * codebook_loss + commitment_weight * commitment_loss +
        entropy_loss_weight * entropy_loss.
    reconstruction_loss (`torch.FloatTensor`): log-mel loss of the decoder fed the quantized latents z_q.
    dual_reconstruction_loss (`torch.FloatTensor`): log-mel loss of the decoder fed the continuous latents z_e
        (dual decoding); 0 when `dual_decoding_weight == 0`.
    codebook_loss / commitment_loss (`torch.FloatTensor`): VQ losses (codebook loss is 0 with EMA updates).
    entropy_loss (`torch.FloatTensor`): code-balancing loss on soft assignments; 0 unless training with
        `entropy_loss_weight > 0`.
    audio_codes (`torch.LongTensor` of shape `(batch_size, num_codebooks, num_frames)`).
    frame_mask (`torch.LongTensor` of shape `(batch_size, num_frames)`).
    mel (`torch.FloatTensor` of shape `(batch_size, num_mel_bins, num_frames)`): reconstruction from z_q.
    target_mel (`torch.FloatTensor` of shape `(batch_size, num_mel_bins, num_frames)`): log-mel of the input.
    codebook_usage (`torch.FloatTensor` of shape `(num_codebooks,)`, *training only*): fraction of each
        sub-codebook used in this batch's valid frames.
    codebook_perplexity (`torch.FloatTensor` of shape `(num_codebooks,)`, *training only*): perplexity of each
        sub-codebook in this batch. Both are statistics of the whole batch, so they are returned in training mode
        only (to watch for collapse): in eval mode every output of an example is independent of the rest of its
        batch. Use `CodebookStatistics` to accumulate usage over a whole data set.
    encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        the encoder's input embedding (after its input conv and LayerNorm) and the output of each ConvNeXt block,
        `num_encoder_layers + 1` tensors of shape `(batch_size, num_frames, hidden_size)`.
    decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        the same for the decoder fed the quantized latents z_q, `num_decoder_layers + 1` tensors.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    dual_reconstruction_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    entropy_loss: torch.FloatTensor | None = None
    audio_codes: torch.LongTensor | None = None
    frame_mask: torch.LongTensor | None = None
    mel: torch.FloatTensor | None = None
    target_mel: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    codebook_perplexity: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None


# --------------------------------------------------------------------------------------------------------------------
# Front-end
# --------------------------------------------------------------------------------------------------------------------


class LogMelSpectrogram(nn.Module):
    """Fixed (non-trainable) front-end: waveform (B, T) -> natural-log mel magnitudes (B, num_mel_bins, F).

    The STFT is centred with zero padding (not reflection), so an example padded with zeros in a batch gives exactly
    the frames it gives alone. Window and filterbank are non-persistent buffers rebuilt from the config. It always
    computes in float32 (buffers stay float32 when the model is cast to half precision; autocast is off inside) and
    returns float32.
    """

    def __init__(self, config: PQVAEConfig):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.win_length = config.win_length
        self.log_floor = config.log_floor
        self.register_buffer("window", torch.hann_window(config.win_length, dtype=torch.float32), persistent=False)
        self.register_buffer("mel_filters", mel_filterbank(config), persistent=False)

    def _apply(self, fn, recurse=True):
        return super()._apply(keep_float32(fn), recurse)

    def magnitude(self, waveform: torch.Tensor) -> torch.Tensor:
        with float32_region(waveform):
            spec = torch.stft(
                waveform.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                window=self.window.float(), center=True, pad_mode="constant", return_complex=True,
            )
            return spec.abs()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with float32_region(waveform):
            mel = torch.matmul(self.mel_filters.float(), self.magnitude(waveform))
            return torch.log(torch.clamp(mel, min=self.log_floor))


class GriffinLim(nn.Module):
    """Weight-free vocoder: log-mel (B, num_mel_bins, F) -> waveform (B, (F - 1) * hop_length).

    Magnitudes are recovered with the filterbank's pseudo-inverse (`magnitude`), then phases by Griffin-Lim with
    momentum (Perraud et al. 2013; `retrieve_phase`, which also accepts any magnitude and a starting phase, e.g. a
    neural vocoder's, for diagnostics). A neural vocoder can replace this module without touching the tokenizer. With a
    `frame_mask` (B, F), each example is reconstructed from its own valid frames, as alone, and zero-padded.
    """

    def __init__(self, config: PQVAEConfig, front_end: LogMelSpectrogram):
        super().__init__()
        self.front_end = [front_end]  # a list, so the shared buffers are not registered twice
        self.num_iters = config.griffin_lim_iters
        self.momentum = GRIFFIN_LIM_MOMENTUM

    def forward(self, log_mel: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        if log_mel.shape[-1] < 2:
            # One frame spans no hop, so there are no samples to produce; istft rejects length 0.
            return log_mel.new_zeros(log_mel.shape[0], 0, dtype=torch.float32)
        if frame_mask is not None and not bool(frame_mask.bool().all()):
            # The iterations couple all frames within a window and start from random phases, so padded examples are
            # reconstructed one by one from their own frames (Griffin-Lim is a fallback; its speed matters little).
            length = (log_mel.shape[-1] - 1) * self.front_end[0].hop_length
            outputs = []
            for example, valid in zip(log_mel, frame_mask.long().sum(-1).tolist()):
                audio = self(example[None, :, :valid])[0]
                outputs.append(F.pad(audio, (0, length - audio.shape[-1])))
            return torch.stack(outputs)
        length = (log_mel.shape[-1] - 1) * self.front_end[0].hop_length
        return self.retrieve_phase(self.magnitude(log_mel), length)

    def magnitude(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, M, F) -> linear STFT magnitude estimate (B, K, F) float32: the filterbank's pseudo-inverse."""
        return mel_pseudo_inverse_magnitude(log_mel, mel_pseudo_inverse(self.front_end[0].mel_filters))

    def retrieve_phase(self, magnitude: torch.Tensor, length: int,
                       initial_phase: torch.Tensor | None = None) -> torch.Tensor:
        """Fast Griffin-Lim: STFT magnitude (B, K, F) -> waveform (B, length) whose STFT magnitude approaches it.

        Starts from `initial_phase` (B, K, F) when given (e.g. a neural vocoder's), else from seeded random phases."""
        front = self.front_end[0]
        stft = dict(n_fft=front.n_fft, hop_length=front.hop_length, win_length=front.win_length, window=front.window,
                    center=True)
        if initial_phase is None:
            generator = torch.Generator(device="cpu").manual_seed(0)
            initial_phase = torch.rand(magnitude.shape, generator=generator).to(magnitude.device) * 2 * math.pi

        def to_waveform(real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
            return torch.istft(torch.complex(real, imag), length=length, **stft)

        def to_spectrogram(audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            spec = torch.stft(audio, pad_mode="constant", return_complex=True, **stft)
            return spec.real, spec.imag

        real, imag = griffin_lim_projections(magnitude, magnitude * torch.cos(initial_phase),
                                             magnitude * torch.sin(initial_phase), self.num_iters, self.momentum,
                                             to_waveform, to_spectrogram)
        return to_waveform(real, imag)


# --------------------------------------------------------------------------------------------------------------------
# Encoder / decoder
# --------------------------------------------------------------------------------------------------------------------


class ConvNeXtBlock(GradientCheckpointingLayer):
    """Depthwise conv -> LayerNorm -> pointwise MLP, residual with layer scale. Input and output (B, C, F).

    The input is zeroed on padded frames before the depthwise conv, so padding never leaks into valid frames. With
    `model.gradient_checkpointing_enable()` its activations are recomputed in the backward pass instead of stored.
    """

    def __init__(self, config: PQVAEConfig, num_layers: int):
        super().__init__()
        channels = config.hidden_size
        self.depthwise = nn.Conv1d(channels, channels, config.kernel_size, padding=config.kernel_size // 2,
                                   groups=channels)
        self.norm = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.pointwise_in = nn.Linear(channels, config.intermediate_size)
        self.pointwise_out = nn.Linear(config.intermediate_size, channels)
        self.layer_scale_init = 1.0 / max(num_layers, 1)
        self.layer_scale = nn.Parameter(torch.full((channels,), self.layer_scale_init))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        residual = hidden
        hidden = self.depthwise(hidden * mask)
        hidden = self.norm(hidden.transpose(1, 2))
        hidden = self.pointwise_out(F.gelu(self.pointwise_in(hidden)))
        return residual + (self.layer_scale * hidden).transpose(1, 2)


class ConvNeXtStack(nn.Module):
    """in-conv -> LayerNorm -> ConvNeXt blocks -> LayerNorm -> linear out. (B, in_dim, F) -> (B, F, out_dim)."""

    def __init__(self, config: PQVAEConfig, in_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        self.conv_in = nn.Conv1d(in_dim, config.hidden_size, config.kernel_size, padding=config.kernel_size // 2)
        self.norm_in = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(ConvNeXtBlock(config, num_layers) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.proj_out = nn.Linear(config.hidden_size, out_dim)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor,
                hidden_states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """`hidden_states`: a list that, when given, receives the input embedding and each block's output as
        (B, F, hidden_size) tensors (transformers' layout for `output_hidden_states`)."""
        features = features.to(self.conv_in.weight.dtype)  # float32 front-end / quantizer output -> model dtype
        mask = frame_mask[:, None, :].to(features.dtype)
        hidden = self.conv_in(features * mask)
        hidden = self.norm_in(hidden.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            hidden = self._record(hidden, hidden_states)
            hidden = block(hidden, mask)
        hidden = self._record(hidden, hidden_states)
        return self.proj_out(self.norm_out(hidden.transpose(1, 2)))

    @staticmethod
    def _record(hidden: torch.Tensor, hidden_states: list[torch.Tensor] | None) -> torch.Tensor:
        """Appends `hidden` (B, C, F) to `hidden_states` as a (B, F, C) view and continues from that view, so the
        recorded tensor is on the graph (its `.grad` is filled by backward) at no copy."""
        if hidden_states is None:
            return hidden
        per_frame = hidden.transpose(1, 2)
        hidden_states.append(per_frame)
        return per_frame.transpose(1, 2)


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class PQVAEPreTrainedModel(PreTrainedAudioTokenizerBase):
    config_class = PQVAEConfig
    config: PQVAEConfig
    base_model_prefix = "pqvae"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True  # the encoder's and decoder's ConvNeXt blocks
    # Losses are means over valid frames, not sums to be divided by `num_items_in_batch`: Trainer must scale them for
    # gradient accumulation itself (and need not pass `num_items_in_batch`, which `forward` accepts and ignores).
    accepts_loss_kwargs = False
    # `from_pretrained(..., dtype=torch.bfloat16 / torch.float16)` loads encoder, decoder and vocoder in that dtype
    # but the codebooks and their statistics in float32; the front-end and the quantizer also compute in float32.
    # (The front-end has no weights to load: its non-persistent buffers stay float32 through `LogMelSpectrogram._apply`.)
    _keep_in_fp32_modules_strict = ["quantizer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LogMelSpectrogram):
            init.copy_(module.window, torch.hann_window(self.config.win_length))
            init.copy_(module.mel_filters, mel_filterbank(self.config))
        elif isinstance(module, (ConvNeXtBlock, VocoderConvNeXtBlock)):
            init.constant_(module.layer_scale, module.layer_scale_init)
        elif isinstance(module, PQVAEVocoder):
            module.reset_buffers()
            # With a magnitude prior a fresh vocoder starts from it exactly (zero correction); loaded weights are
            # marked initialised by transformers and kept.
            if module.mel_inverse is not None and not getattr(module.proj_out.weight, "_is_hf_initialized", False):
                module.reset_magnitude_correction()
        elif isinstance(module, VectorQuantizerGroup):
            # Buffers as registered: statistics are seeded by the first training forward (`_initialize`).
            bound = 1.0 / module.codebook_size
            init.uniform_(module.codebook, -bound, bound)
            init.zeros_(module.ema_embed_sum)
            init.zeros_(module.ema_cluster_size)
            init.zeros_(module.usage_ema)
            init.copy_(module.initialized, torch.tensor(False))
            init.zeros_(module.steps)
        elif isinstance(module, ProductQuantizer) and module.subspace_rotation == "opq":
            init.copy_(module.rotation, torch.eye(module.codebook_dim))
            init.copy_(module.rotation_initialized, torch.tensor(False))
            init.zeros_(module.ema_cross_covariance)
            init.zeros_(module.rotation_steps)


class PQVAEModel(PQVAEPreTrainedModel):
    """PQ-VAE speech tokenizer.

    >>> model = PQVAEModel(PQVAEConfig())
    >>> codes = model.encode(input_values, padding_mask).audio_codes        # (B, M, F) int64
    >>> out = model.decode(codes, padding_mask)                               # .mel, .audio_values
    >>> loss = model(input_values, padding_mask).loss                         # training (dual decoding)
    """

    _ignored_forward_kwargs = frozenset({"num_items_in_batch"})

    def __init__(self, config: PQVAEConfig):
        super().__init__(config)
        self.front_end = LogMelSpectrogram(config)
        self.encoder = ConvNeXtStack(config, config.num_mel_bins, config.codebook_dim, config.num_encoder_layers)
        quantizer_flags = dict(
            use_ema=config.use_ema, ema_decay=config.ema_decay, kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters, dead_code_threshold=config.dead_code_threshold,
            dead_code_threshold_mode=config.dead_code_threshold_mode,
            dead_code_restart_interval=config.dead_code_restart_interval, usage_decay=config.usage_decay,
            use_cosine=config.use_cosine_codebook, entropy_temperature=config.entropy_temperature,
            dead_code_replay_frames=config.dead_code_replay_frames, usage_window_frames=config.usage_window_frames,
            kmeans_init_min_frames=config.kmeans_init_min_frames,
            dead_code_restart_last_step=config.dead_code_restart_last_step,
        )
        if config.quantizer_type != "rvq":
            quantizer_flags.update(subspace_rotation=config.subspace_rotation,
                                   rotation_update_interval=config.rotation_update_interval)
        quantizer_class = ResidualQuantizer if config.quantizer_type == "rvq" else ProductQuantizer
        self.quantizer = quantizer_class(
            config.num_codebooks, config.codebook_size, config.codebook_dim, **quantizer_flags
        )
        self.decoder = ConvNeXtStack(config, config.codebook_dim, config.num_mel_bins, config.num_decoder_layers)
        # The vocoder is a sub-module rather than a separate PreTrainedModel: one folder, one safetensors file, one
        # config and one `from_pretrained` give tokens *and* audio, and the vocoder's mel settings cannot drift from
        # the front-end's. It is trained separately (pqvae_hf.vocoder_training) and merged into the checkpoint;
        # `decode(..., return_waveform=False)` skips it.
        if config.vocoder == "neural":
            self.vocoder = PQVAEVocoder(config)
        elif config.vocoder == "griffin_lim":
            self.vocoder = GriffinLim(config, self.front_end)
        else:
            self.vocoder = None
        # Optional second vocoder for mels computed from audio (`vocode_mel`): see `PQVAEConfig.mel_vocoder`.
        self.mel_vocoder = (
            PQVAEVocoder(config, magnitude_prior=config.mel_vocoder_magnitude_prior,
                         phase_refinement_iters=config.mel_vocoder_phase_refinement_iters)
            if config.mel_vocoder == "neural" else None
        )
        self.post_init()

    # ---------------------------------------------------------------- input checks

    def _check_audio(self, input_values: torch.Tensor, on_device: bool = False) -> torch.Tensor:
        """(B, 1, T) or (B, T) float audio -> (B, T), with clear errors for anything else. `on_device`: check the
        samples' finiteness on the device (a RuntimeError raised asynchronously) instead of reading it back."""
        if not torch.is_tensor(input_values):
            raise TypeError(f"input_values must be a torch.Tensor of shape (batch, 1, samples), got {type(input_values)}.")
        if input_values.dim() == 3:
            if input_values.shape[1] != 1:
                raise ValueError(
                    f"PQ-VAE takes mono audio of shape (batch, 1, samples); got {input_values.shape[1]} channels"
                    f" (shape {tuple(input_values.shape)}). Downmix first, e.g. with the feature extractor's"
                    " `mono=True`."
                )
            input_values = input_values[:, 0]
        elif input_values.dim() != 2:
            raise ValueError(
                f"input_values must have shape (batch, 1, samples) or (batch, samples), got {tuple(input_values.shape)}."
            )
        if not input_values.is_floating_point():
            raise ValueError(
                f"input_values must be float audio in [-1, 1], got dtype {input_values.dtype}; the feature extractor"
                " converts integer PCM."
            )
        if input_values.shape[-1] == 0 or input_values.shape[0] == 0:
            raise ValueError(f"input_values is empty (shape {tuple(input_values.shape)}).")
        message = "input_values contains NaN or Inf samples; clean the audio before encoding."
        if on_device or torch.compiler.is_compiling():
            # Training step or torch.compile: checked on the device (no host read, no graph break); fails as a
            # RuntimeError with this message.
            torch._assert_async(torch.isfinite(input_values).all(), message)
        elif not bool(torch.isfinite(input_values).all()):
            raise ValueError(message)
        return input_values

    def _prepare_audio(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None, on_device: bool = False):
        """Checked (B, T) waveform with padding silenced (whatever the caller put there) and its frame mask (B, F)."""
        waveform = self._check_audio(input_values, on_device)
        frame_mask = self.frame_mask_from_padding_mask(padding_mask, *waveform.shape, device=waveform.device)
        if padding_mask is not None:
            waveform = waveform * padding_mask.to(waveform.dtype)
        return waveform, frame_mask

    def frame_mask_from_padding_mask(self, padding_mask: torch.Tensor | None, batch_size: int, num_samples: int,
                                     device: torch.device | None = None) -> torch.Tensor:
        """Sample mask (B, T) (1 = real audio, right padding) -> frame mask (B, F) of dtype long."""
        num_frames = self.config.num_frames(num_samples)
        if padding_mask is None:
            return torch.ones(batch_size, num_frames, dtype=torch.long, device=device)
        if padding_mask.shape != (batch_size, num_samples):
            raise ValueError(
                f"padding_mask must have shape (batch, samples) = {(batch_size, num_samples)}, got"
                f" {tuple(padding_mask.shape)}."
            )
        lengths = padding_mask.long().sum(-1)
        valid_frames = lengths // self.config.hop_length + 1
        frames = torch.arange(num_frames, device=padding_mask.device)
        return (frames[None, :] < valid_frames[:, None]).long()

    def _check_codes(self, audio_codes: torch.Tensor) -> None:
        num_codebooks, codebook_size = self.config.num_codebooks, self.config.codebook_size
        if not torch.is_tensor(audio_codes):
            raise TypeError(f"audio_codes must be a torch.Tensor of shape (batch, {num_codebooks}, frames).")
        if audio_codes.dtype.is_floating_point or audio_codes.dtype == torch.bool or audio_codes.is_complex():
            raise ValueError(f"audio_codes must be an integer tensor (int64), got dtype {audio_codes.dtype}.")
        if audio_codes.dim() != 3 or audio_codes.shape[1] != num_codebooks:
            hint = " Composite ids (batch, frames) convert with `model.composite_to_codes`." if audio_codes.dim() == 2 else ""
            raise ValueError(
                f"audio_codes must have shape (batch, num_codebooks={num_codebooks}, frames), got"
                f" {tuple(audio_codes.shape)}.{hint}"
            )
        if audio_codes.shape[-1] == 0:
            raise ValueError("audio_codes has no frames.")
        if torch.compiler.is_compiling():  # a device-side check keeps the graph whole
            in_range = ((audio_codes >= 0) & (audio_codes < codebook_size)).all()
            torch._assert_async(in_range, f"audio_codes must lie in [0, {codebook_size}) (codebook_size).")
            return
        low, high = int(audio_codes.min()), int(audio_codes.max())
        if low < 0 or high >= codebook_size:
            raise ValueError(
                f"audio_codes must lie in [0, {codebook_size}) (codebook_size); got values in [{low}, {high}]."
            )

    # ---------------------------------------------------------------- building blocks

    def _encode_latents(self, waveform: torch.Tensor, frame_mask: torch.Tensor,
                        hidden_states: list[torch.Tensor] | None = None):
        """waveform (B, T) -> (target log-mel (B, n_mels, F), latents z_e (B, F, D)); see `ConvNeXtStack.forward`
        for `hidden_states`."""
        log_mel = self.front_end(waveform)
        return log_mel, self.encoder(log_mel, frame_mask, hidden_states)

    def _decode_latents(self, latents: torch.Tensor, frame_mask: torch.Tensor,
                        hidden_states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """latents (B, F, D) -> predicted log-mel (B, n_mels, F)."""
        return self.decoder(latents.transpose(1, 2), frame_mask, hidden_states).transpose(1, 2)

    def _mel_loss(self, prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        prediction, target = prediction.float(), target.float()  # a float32 loss, whatever the decoder's dtype
        weights = frame_mask[:, None, :].to(prediction.dtype)
        denom = weights.sum().clamp_min(1.0) * prediction.shape[1]
        error = prediction - target
        loss = self.config.mel_l1_weight * (error.abs() * weights).sum() / denom
        if self.config.mel_l2_weight > 0:
            loss = loss + self.config.mel_l2_weight * ((error**2) * weights).sum() / denom
        return loss

    # ---------------------------------------------------------------- public API

    def encode(
        self,
        input_values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> PQVAEEncoderOutput | tuple[torch.Tensor, torch.Tensor]:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, num_samples)`): mono audio at
                `config.sampling_rate`, as returned by the feature extractor.
            padding_mask (`torch.Tensor` of shape `(batch_size, num_samples)`, *optional*): 1 for real samples, 0 for
                right padding.

        Returns:
            [`PQVAEEncoderOutput`] with `audio_codes` (B, M, F) int64 and `frame_mask` (B, F), where
            `F = num_samples // hop_length + 1`; an example of `L` samples has `L // hop_length + 1` valid frames.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        waveform, frame_mask = self._prepare_audio(input_values, padding_mask)
        _, latents = self._encode_latents(waveform, frame_mask)
        audio_codes = self.quantizer.encode(latents)
        if not return_dict:
            return audio_codes, frame_mask
        return PQVAEEncoderOutput(audio_codes=audio_codes, frame_mask=frame_mask)

    def decode(
        self,
        audio_codes: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        return_waveform: bool = True,
    ) -> PQVAEDecoderOutput | tuple[torch.Tensor | None, torch.Tensor]:
        r"""
        Args:
            audio_codes (`torch.LongTensor` of shape `(batch_size, num_codebooks, num_frames)`): codes from `encode`.
            padding_mask (`torch.Tensor` of shape `(batch_size, num_samples)`, *optional*): the sample mask given to
                `encode`; the waveform is then returned with exactly `num_samples` samples, zero past each example.
            return_waveform (`bool`, defaults to `True`): run the vocoder; `False` returns only the log-mel.

        Returns:
            [`PQVAEDecoderOutput`] with `mel` (B, num_mel_bins, F), the decoder's log-mel estimate, and `audio_values`
            (B, 1, samples) or None: the vocoder's rendering of `postfilter_mel(mel)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_codes(audio_codes)
        batch_size, _, num_frames = audio_codes.shape
        if padding_mask is not None:
            num_samples = padding_mask.shape[-1]
            if self.config.num_frames(num_samples) != num_frames:
                raise ValueError(
                    f"padding_mask has {num_samples} samples, which encode to {self.config.num_frames(num_samples)}"
                    f" frames, but audio_codes has {num_frames} frames; pass the padding_mask used for encoding."
                )
            frame_mask = self.frame_mask_from_padding_mask(padding_mask, batch_size, num_samples)
        else:
            frame_mask = torch.ones(batch_size, num_frames, dtype=torch.long, device=audio_codes.device)
        mel = self._decode_latents(self.quantizer.decode(audio_codes.long()), frame_mask)
        if padding_mask is not None:
            # Padded frames hold the log-mel of silence (what the front-end gives for zero padding), not decoder output.
            mel = mel.masked_fill(~frame_mask[:, None, :].bool(), math.log(self.config.log_floor))
        audio_values = None
        if return_waveform and self.vocoder is not None:
            vocoder_input = self.postfilter_mel(mel, frame_mask)
            # With padding, the vocoder sees only each example's own frames: batched audio equals audio decoded alone.
            audio = self.vocoder(vocoder_input, frame_mask if padding_mask is not None else None)  # (B, (F-1) * hop)
            if padding_mask is not None:
                audio = F.pad(audio, (0, max(0, padding_mask.shape[-1] - audio.shape[-1])))[:, : padding_mask.shape[-1]]
                audio = audio * padding_mask.to(audio.dtype)
            audio_values = audio[:, None, :]
        if not return_dict:
            return audio_values, mel
        return PQVAEDecoderOutput(audio_values=audio_values, mel=mel)

    @property
    def true_mel_vocoder(self) -> nn.Module | None:
        """The vocoder for log-mels computed from audio: `mel_vocoder` when the model has one, else `vocoder`."""
        return self.mel_vocoder if self.mel_vocoder is not None else self.vocoder

    def vocode_mel(self, log_mel: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Waveform of a log-mel computed from real audio (the front-end's, `model.front_end(waveform)`), or predicted
        in its place (e.g. by a text-to-speech model), through `true_mel_vocoder`. A mel decoded from tokens goes
        through `decode` instead, which post-filters it and renders it with `vocoder`.

        Args:
            log_mel (`torch.FloatTensor` of shape `(batch_size, num_mel_bins, num_frames)`): natural-log mel.
            frame_mask (`torch.LongTensor` of shape `(batch_size, num_frames)`, *optional*): 1 for valid frames, 0
                for right padding; each example then gets the waveform it gets alone, followed by zeros.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, (num_frames - 1) * hop_length)`.
        """
        vocoder = self.true_mel_vocoder
        if vocoder is None:
            raise ValueError("This model has no vocoder (config.vocoder='none'): set `vocoder='griffin_lim'` to render"
                             " mels without weights, or load a checkpoint with a neural vocoder.")
        if log_mel.dim() != 3 or log_mel.shape[1] != self.config.num_mel_bins:
            raise ValueError(f"`log_mel` must be (batch, num_mel_bins={self.config.num_mel_bins}, frames), got shape"
                             f" {tuple(log_mel.shape)}.")
        return vocoder(log_mel, frame_mask)

    def postfilter_mel(self, mel: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Global-variance post-filter for a log-mel decoded from tokens, applied before the vocoder.

        mel (B, num_mel_bins, F) -> (B, num_mel_bins, F): on valid frames, `mean + c * (mel - mean)` with `mean` each
        band's mean over the example's valid frames and `c = config.decoded_mel_contrast`; padded frames are returned
        unchanged. The decoder, trained to minimise an L1 error from codes that cannot pin down every detail, predicts
        a flattened mel; stretching each band around its own mean restores contrast the vocoder would otherwise
        render as muffled speech (global-variance compensation, as in statistical speech synthesis). Per example and
        over valid frames only, so an example gives the same result batched or alone. `decode` applies it to the
        vocoder's input (its returned `mel` is the decoder's own estimate); code that vocodes a mel from
        `decode(..., return_waveform=False)` calls it too. Identity when the factor is 1.
        """
        contrast = self.config.decoded_mel_contrast
        if contrast == 1.0:
            return mel
        # The band means are sums over every frame of the clip: float32 even when the model runs in half precision.
        values = mel.float()
        valid = torch.ones_like(values[:, :1]) if frame_mask is None else frame_mask[:, None, :].float()
        mean = (values * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp_min(1.0)
        return torch.where(valid.bool(), mean + contrast * (values - mean), values).to(mel.dtype)

    def forward(
        self,
        input_values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> PQVAEOutput | tuple:
        r"""
        Training pass with dual decoding: the shared decoder reconstructs the log-mel from z_q (straight-through) and,
        when `dual_decoding_weight > 0`, from z_e. Losses are averaged over valid frames only.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, num_samples)`).
            padding_mask (`torch.Tensor` of shape `(batch_size, num_samples)`, *optional*).
            output_hidden_states (`bool`, *optional*): also return `encoder_hidden_states` and
                `decoder_hidden_states` (default: `config.output_hidden_states`).
            kwargs: only what `transformers.Trainer` may pass (`num_items_in_batch`, ignored); anything else is a
                TypeError, so a misspelt `padding_mask` cannot be dropped silently.
        """
        unknown = sorted(set(kwargs) - self._ignored_forward_kwargs)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.forward() got unexpected keyword argument(s) {unknown}; it takes"
                f" input_values, padding_mask, return_dict and output_hidden_states."
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        encoder_hidden_states = [] if output_hidden_states else None
        decoder_hidden_states = [] if output_hidden_states else None
        waveform, frame_mask = self._prepare_audio(input_values, padding_mask, on_device=self.training)
        target_mel, latents = self._encode_latents(waveform, frame_mask, encoder_hidden_states)
        with_entropy_loss = self.training and self.config.entropy_loss_weight > 0
        quantized = self.quantizer(latents, frame_mask, with_entropy_loss=with_entropy_loss)
        entropy_loss = quantized.entropy_loss if with_entropy_loss else torch.zeros((), device=latents.device)

        dual = self.config.dual_decoding_weight > 0
        if dual and not output_hidden_states:
            # One decoder pass over [z_q; z_e] is cheaper than two passes.
            predictions = self._decode_latents(torch.cat([quantized.quantized, quantized.latents]),
                                               torch.cat([frame_mask, frame_mask]))
            mel, dual_mel = predictions.chunk(2)
        else:  # z_q alone through the decoder, so its hidden states are the tensors the loss flows through
            mel = self._decode_latents(quantized.quantized, frame_mask, decoder_hidden_states)
            dual_mel = self._decode_latents(quantized.latents, frame_mask) if dual else None
        reconstruction_loss = self._mel_loss(mel, target_mel, frame_mask)
        if dual:
            dual_reconstruction_loss = self._mel_loss(dual_mel, target_mel, frame_mask)
        else:
            dual_reconstruction_loss = torch.zeros((), device=mel.device)
        loss = (
            reconstruction_loss
            + self.config.dual_decoding_weight * dual_reconstruction_loss
            + self.config.codebook_loss_weight * quantized.codebook_loss
            + self.config.commitment_weight * quantized.commitment_loss
            + self.config.entropy_loss_weight * entropy_loss
        )
        usage, perplexity = self._batch_code_statistics(quantized.codes, frame_mask) if self.training else (None, None)
        output = PQVAEOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss.detach(),
            dual_reconstruction_loss=dual_reconstruction_loss.detach(),
            codebook_loss=quantized.codebook_loss.detach(),
            commitment_loss=quantized.commitment_loss.detach(),
            entropy_loss=entropy_loss.detach(),
            audio_codes=quantized.codes,
            frame_mask=frame_mask,
            mel=mel,
            target_mel=target_mel,
            codebook_usage=usage,
            codebook_perplexity=perplexity,
            encoder_hidden_states=tuple(encoder_hidden_states) if output_hidden_states else None,
            decoder_hidden_states=tuple(decoder_hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def _batch_code_statistics(self, codes: torch.Tensor, frame_mask: torch.Tensor):
        """Usage fraction and perplexity of each sub-codebook over this batch's valid frames, each (M,).

        Computed on the codes' device with fixed shapes (a masked scatter-add, no bincount or selection), so the
        training step never waits for the device."""
        size, num_codebooks = self.config.codebook_size, codes.shape[1]
        offsets = torch.arange(num_codebooks, device=codes.device)[None, :, None] * size
        valid = frame_mask[:, None, :].expand_as(codes).bool()
        codes, weights = torch.where(valid, codes, 0), valid.to(torch.float32)  # padded frames may hold any code
        counts = torch.zeros(num_codebooks * size, device=codes.device).scatter_add_(
            0, (codes + offsets).reshape(-1), weights.reshape(-1)).view(num_codebooks, size)
        usage = (counts > 0).float().mean(dim=1)
        total = counts.sum(dim=1, keepdim=True)
        probs = counts / total.clamp_min(1.0)
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=1)  # 0 * log(tiny) = 0 for unused codes
        perplexity = torch.where(total[:, 0] > 0, torch.exp(entropy), torch.zeros_like(entropy))
        return usage, perplexity

    # ---------------------------------------------------------------- fine-tuning helpers

    def freeze_encoder(self) -> None:
        """Stop training the encoder (codes of a given input then only change if the codebooks change)."""
        self.encoder.requires_grad_(False)

    def freeze_codebooks(self) -> None:
        """Keep every codeword fixed: no gradient, EMA update, k-means init or dead-code restart."""
        for module in self.quantizer.modules():
            if isinstance(module, VectorQuantizerGroup):
                module.frozen = True
                module.codebook.requires_grad_(False)

    # ---------------------------------------------------------------- token helpers

    def codes_to_composite(self, audio_codes: torch.Tensor) -> torch.Tensor:
        """(B, M, F) codes -> (B, F) composite ids in [0, N^M): `id = sum_m codes[:, m] * N**m` (codebook 0 least
        significant)."""
        self._check_codes(audio_codes)
        return codes_to_composite(audio_codes, self.config.codebook_size)

    def composite_to_codes(self, composite_ids: torch.Tensor) -> torch.Tensor:
        """(B, F) composite ids -> (B, M, F) codes; the exact inverse of `codes_to_composite`."""
        size = self.config.composite_codebook_size
        if composite_ids.dtype.is_floating_point:
            raise ValueError(f"composite ids must be integers, got dtype {composite_ids.dtype}.")
        if composite_ids.numel() and (int(composite_ids.min()) < 0 or int(composite_ids.max()) >= size):
            raise ValueError(f"composite ids must lie in [0, {size}) (codebook_size ** num_codebooks).")
        return composite_to_codes(composite_ids, self.config.codebook_size, self.config.num_codebooks)


__all__ = ["PQVAEModel", "PQVAEPreTrainedModel", "PQVAEEncoderOutput", "PQVAEDecoderOutput", "PQVAEOutput"]
