"""Export PQ-VAE encode (audio -> codes) and decode (codes -> log-mel, audio) to ONNX, then verify with onnxruntime.

    python -m pqvae_hf.conversion.export_onnx --model checkpoints/pqvae-speech-small --output onnx/

Writes `encoder.onnx` (inputs `input_values` (B, 1, T) float32 and `padding_mask` (B, T) int64; output
`audio_codes` (B, M, T // hop + 1) int64) and `decoder.onnx` (input `audio_codes` (B, M, F); outputs `mel`
(B, n_mels, F) and, with a neural vocoder, `audio_values` (B, (F - 1) * hop)), with dynamic batch and length axes.

torch.stft / torch.istft are replaced by the same transforms written as convolutions with a fixed DFT basis, which
every ONNX runtime supports. Verification: codes identical to PyTorch on a fixed input; log-mel and audio within the
stated tolerances (float32 rounding of a different but equivalent computation). The codes are not bit-exact in
general: where two codewords are nearly equidistant the float differences of the two computations can pick the
other one. `--dataset_dir ... --clips 40` measures it on real clips (fraction of identical codes, and how near a tie
each differing code is). Griffin-Lim is iterative and not exported: models with vocoder="griffin_lim" get a decoder
that returns the log-mel only. A neural vocoder's fixed number of refinement projections
(`vocoder_phase_refinement_iters`) is unrolled into the graph. A model with a mel vocoder (`config.mel_vocoder`) also
gets `mel_vocoder.onnx`: input `log_mel` (B, n_mels, F), the front-end's log-mel of real audio; output
`audio_values` (B, (F - 1) * hop), as `model.vocode_mel(log_mel)`.

Lengths: `audio_values` has (F - 1) * hop samples, as `model.decode(codes)` without a padding mask. With the
`padding_mask` of an input of L samples (F = L // hop + 1), PyTorch pads to exactly L samples, i.e. appends
L - (F - 1) * hop < hop zeros: do the same to the ONNX output when you need the input's length.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEL_TOLERANCE = 1e-3
AUDIO_TOLERANCE = 1e-3


def _padded_window(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """torch.stft centres a shorter window inside n_fft samples; do the same."""
    left = (n_fft - window.shape[0]) // 2
    return F.pad(window, (left, n_fft - window.shape[0] - left))


class ConvSTFT(nn.Module):
    """Waveform (B, T) -> STFT as (real, imag), each (B, n_fft // 2 + 1, T // hop + 1), like torch.stft(center=True,
    pad_mode="constant")."""

    def __init__(self, n_fft: int, hop: int, window: torch.Tensor):
        super().__init__()
        self.hop, self.half = hop, n_fft // 2
        window = _padded_window(window.detach().cpu().double(), n_fft)
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2K, n_fft)
        self.register_buffer("basis", basis.float()[:, None, :])

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = F.conv1d(F.pad(waveform[:, None, :], (self.half, self.half)), self.basis, stride=self.hop)
        real, imag = spec.chunk(2, dim=1)
        return real, imag


class ConvSTFTLogMel(nn.Module):
    """Waveform (B, T) -> log-mel (B, n_mels, T // hop + 1), equal to LogMelSpectrogram up to float rounding."""

    def __init__(self, front_end):
        super().__init__()
        self.floor = front_end.log_floor
        self.stft = ConvSTFT(front_end.n_fft, front_end.hop_length, front_end.window)
        self.register_buffer("mel_filters", front_end.mel_filters.detach().cpu().float())

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(waveform)
        magnitude = torch.sqrt(real**2 + imag**2)
        return torch.log(torch.clamp(torch.matmul(self.mel_filters, magnitude), min=self.floor))


class ConvISTFT(nn.Module):
    """Complex spectrum as (real, imag) (B, K, F) -> waveform (B, (F - 1) * hop), like torch.istft(center=True)."""

    def __init__(self, n_fft: int, hop: int, window: torch.Tensor):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        window = _padded_window(window.detach().cpu().double(), n_fft)
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        scale = torch.full((k.shape[0],), 2.0, dtype=torch.float64)
        scale[0] = 1.0
        scale[-1] = 1.0 if n_fft % 2 == 0 else 2.0
        angle = 2 * math.pi * n[:, None] * k[None, :] / n_fft
        self.register_buffer("cos_basis", (torch.cos(angle) * scale / n_fft * window[:, None]).float())
        self.register_buffer("sin_basis", (-torch.sin(angle) * scale / n_fft * window[:, None]).float())
        self.register_buffer("window_squared", (window**2).float()[None, :, None])
        self.register_buffer("overlap_add", torch.eye(n_fft)[:, None, :])

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        frames = torch.matmul(self.cos_basis, real) + torch.matmul(self.sin_basis, imag)  # (B, n_fft, F)
        audio = F.conv_transpose1d(frames, self.overlap_add, stride=self.hop)[:, 0]
        envelope = F.conv_transpose1d(self.window_squared.expand(1, -1, real.shape[-1]), self.overlap_add,
                                      stride=self.hop)[:, 0]
        start = self.n_fft // 2
        length = (real.shape[-1] - 1) * self.hop
        return audio[:, start : start + length] / envelope[:, start : start + length].clamp_min(1e-11)


class OnnxEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.log_mel = ConvSTFTLogMel(model.front_end)

    def forward(self, input_values: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        waveform = input_values[:, 0] * padding_mask.to(input_values.dtype)
        log_mel = self.log_mel(waveform)
        valid = padding_mask.long().sum(-1) // self.model.config.hop_length + 1
        frame_mask = (torch.arange(log_mel.shape[-1], device=log_mel.device)[None, :] < valid[:, None]).long()
        latents = self.model.encoder(log_mel, frame_mask)
        return self.model.quantizer.encode(latents)


class ConvVocoder(nn.Module):
    """A neural vocoder with its inverse STFT (and the forward STFT of its phase refinement,
    `vocoder_phase_refinement_iters`, unrolled with the same projections) as convolutions: log-mel (B, n_mels, F) ->
    audio (B, (F - 1) * hop)."""

    def __init__(self, vocoder):
        super().__init__()
        self.vocoder = vocoder
        self.istft = ConvISTFT(vocoder.n_fft, vocoder.hop_length, vocoder.window)
        self.stft = ConvSTFT(vocoder.n_fft, vocoder.hop_length, vocoder.window)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        magnitude, phase = self.vocoder.magnitude_and_phase(log_mel)
        return self.istft(*self.vocoder.output_spectrogram(magnitude, phase, self.istft, self.stft))


class OnnxDecoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.vocoder = ConvVocoder(model.vocoder) if model.config.vocoder == "neural" else None

    def forward(self, audio_codes: torch.Tensor):
        latents = self.model.quantizer.decode(audio_codes)
        frame_mask = torch.ones(audio_codes.shape[0], audio_codes.shape[-1], dtype=torch.long,
                                device=audio_codes.device)
        mel = self.model._decode_latents(latents, frame_mask)
        if self.vocoder is None:
            return (mel,)
        return mel, self.vocoder(self.model.postfilter_mel(mel, frame_mask))


def export(model, output: str, opset: int = 17) -> dict:
    os.makedirs(output, exist_ok=True)
    model = model.eval()
    config = model.config
    encoder, decoder = OnnxEncoder(model).eval(), OnnxDecoder(model).eval()
    audio = torch.zeros(2, 1, config.sampling_rate)
    mask = torch.ones(2, config.sampling_rate, dtype=torch.long)
    codes = torch.zeros(2, config.num_codebooks, 40, dtype=torch.long)
    encoder_path, decoder_path = os.path.join(output, "encoder.onnx"), os.path.join(output, "decoder.onnx")
    with torch.no_grad():
        torch.onnx.export(encoder, (audio, mask), encoder_path, input_names=["input_values", "padding_mask"],
                          output_names=["audio_codes"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input_values": {0: "batch", 2: "samples"},
                                        "padding_mask": {0: "batch", 1: "samples"},
                                        "audio_codes": {0: "batch", 2: "frames"}})
        outputs = ["mel", "audio_values"] if config.vocoder == "neural" else ["mel"]
        torch.onnx.export(decoder, (codes,), decoder_path, input_names=["audio_codes"], output_names=outputs,
                          opset_version=opset, dynamo=False,
                          dynamic_axes={"audio_codes": {0: "batch", 2: "frames"}, "mel": {0: "batch", 2: "frames"},
                                        **({"audio_values": {0: "batch", 1: "samples"}} if len(outputs) > 1 else {})})
        paths = {"encoder": encoder_path, "decoder": decoder_path}
        if model.mel_vocoder is not None:  # the true-mel vocoder (`PQVAEModel.vocode_mel`): log_mel -> audio_values
            paths["mel_vocoder"] = os.path.join(output, "mel_vocoder.onnx")
            log_mel = torch.full((2, config.num_mel_bins, 40), -4.0)
            torch.onnx.export(ConvVocoder(model.mel_vocoder).eval(), (log_mel,), paths["mel_vocoder"],
                              input_names=["log_mel"], output_names=["audio_values"], opset_version=opset,
                              dynamo=False, dynamic_axes={"log_mel": {0: "batch", 2: "frames"},
                                                          "audio_values": {0: "batch", 1: "samples"}})
    return paths


def verify(model, paths: dict, seconds: float = 3.0, seed: int = 0) -> dict:
    """Run both graphs with onnxruntime on a fixed speech-like input and compare with PyTorch."""
    import onnxruntime as ort

    config = model.config
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * config.sampling_rate)) / config.sampling_rate
    audio = 0.3 * torch.sin(2 * math.pi * (120 + 80 * torch.sin(2 * math.pi * 0.5 * t)) * t)
    audio = (audio * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)) + 0.01 * torch.randn(t.shape, generator=generator))
    values = torch.stack([audio, audio])[:, None]
    mask = torch.ones(2, audio.shape[0], dtype=torch.long)
    mask[1, audio.shape[0] // 2 :] = 0
    with torch.no_grad():
        codes = model.encode(values, mask).audio_codes
        decoded = model.decode(codes)
    options = ort.SessionOptions()
    encoder = ort.InferenceSession(paths["encoder"], options, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(paths["decoder"], options, providers=["CPUExecutionProvider"])
    onnx_codes = encoder.run(None, {"input_values": values.numpy(), "padding_mask": mask.numpy()})[0]
    onnx_outputs = decoder.run(None, {"audio_codes": codes.numpy()})
    result = {
        "codes_identical": bool(np.array_equal(onnx_codes, codes.numpy())),
        "codes_agreement": float(np.mean(onnx_codes == codes.numpy())),
        "max_mel_difference": float(np.abs(onnx_outputs[0] - decoded.mel.numpy()).max()),
    }
    if len(onnx_outputs) > 1 and decoded.audio_values is not None:
        result["max_audio_difference"] = float(np.abs(onnx_outputs[1] - decoded.audio_values[:, 0].numpy()).max())
    if "mel_vocoder" in paths:
        log_mel = model.front_end(values[:1, 0])
        with torch.no_grad():
            expected = model.vocode_mel(log_mel).numpy()
        mel_vocoder = ort.InferenceSession(paths["mel_vocoder"], options, providers=["CPUExecutionProvider"])
        rendered = mel_vocoder.run(None, {"log_mel": log_mel.numpy()})[0]
        result["max_mel_vocoder_audio_difference"] = float(np.abs(rendered - expected).max())
    return result


@torch.no_grad()
def measure_codes_agreement(model, encoder_path: str, audios: list[np.ndarray]) -> dict:
    """ONNX vs PyTorch codes on real clips (one at a time): the fraction of identical codes and, for PQ models, how
    close each differing code is to a tie: the relative gap `(d(x, c_onnx) - d(x, c_torch)) / d(x, c_torch)` of
    squared distances of PyTorch's own latent x to the two codewords (0 % = an exact tie)."""
    import onnxruntime as ort

    session = ort.InferenceSession(encoder_path, providers=["CPUExecutionProvider"])
    quantizer = model.quantizer
    same = total = 0
    gaps = []
    for audio in audios:
        values = torch.from_numpy(np.asarray(audio, dtype=np.float32))[None, None]
        mask = torch.ones(1, values.shape[-1], dtype=torch.long)
        ours = model.encode(values, mask).audio_codes
        theirs = torch.from_numpy(session.run(None, {"input_values": values.numpy(), "padding_mask": mask.numpy()})[0])
        same += int((ours == theirs).sum())
        total += ours.numel()
        if bool((ours != theirs).any()) and hasattr(quantizer, "codebooks"):
            waveform, frame_mask = model._prepare_audio(values, mask)
            latents = model._encode_latents(waveform, frame_mask)[1]
            groups = quantizer.codebooks
            x = groups._normalized(quantizer._rotate(latents).view(1, -1, quantizer.num_codebooks, groups.dim))[0]
            codebook = groups._normalized(groups.codebook)  # (M, N, d)
            for m, t in (ours[0] != theirs[0]).nonzero().tolist():
                near = float(((x[t, m] - codebook[m, ours[0, m, t]]) ** 2).sum())
                other = float(((x[t, m] - codebook[m, theirs[0, m, t]]) ** 2).sum())
                gaps.append((other - near) / max(near, 1e-12))
    result = {"clips": len(audios), "codes": total, "codes_differing": total - same,
              "codes_agreement": same / max(total, 1)}
    if gaps:
        result["differing_distance_gap_percent"] = {"min": 100 * min(gaps), "median": 100 * float(np.median(gaps)),
                                                    "max": 100 * max(gaps)}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the shipped checkpoint)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--dataset_dir", default=None, help="also measure code agreement on real clips from here")
    parser.add_argument("--split", default="test")
    parser.add_argument("--split_column", default=None)
    parser.add_argument("--clips", type=int, default=40, help="the first N clips of the split (dataset order)")
    args = parser.parse_args(argv)
    from pqvae_hf.inference import load_model

    start = time.time()
    paths = export(load_model(args.model), args.output, args.opset)
    result = {**paths, **verify(load_model(args.model), paths)}
    if args.dataset_dir:
        from pqvae_hf.data import decode_audio, load_audio_dataset

        model = load_model(args.model)
        data = load_audio_dataset(dataset_dir=args.dataset_dir, split=args.split, split_column=args.split_column,
                                  max_samples=args.clips)
        audios = [decode_audio(cell, model.config.sampling_rate) for cell in data["audio"]]
        result["real_clips"] = {"split": args.split, **measure_codes_agreement(model, paths["encoder"], audios)}
    result["seconds"] = round(time.time() - start, 1)
    print(json.dumps(result, indent=2))
    if not result["codes_identical"] or result["max_mel_difference"] > MEL_TOLERANCE or \
            result.get("max_audio_difference", 0.0) > AUDIO_TOLERANCE or \
            result.get("max_mel_vocoder_audio_difference", 0.0) > AUDIO_TOLERANCE:
        raise SystemExit(f"ONNX verification outside tolerance (mel {MEL_TOLERANCE}, audio {AUDIO_TOLERANCE}).")
    return result


if __name__ == "__main__":
    main()
