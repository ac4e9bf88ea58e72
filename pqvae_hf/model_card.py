"""Model cards (README.md) for PQ-VAE checkpoints: config summary, data, measured metrics, how to load."""

from __future__ import annotations

import os


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def write_model_card(output_dir: str, config, metrics: dict | None = None, model_name: str = "pqvae",
                     training: dict | None = None, extra_sections: str = "", license: str = "apache-2.0") -> str:
    """Writes `output_dir/README.md` and returns its text. `metrics` are the measured eval numbers (none invented)."""
    parameters = training.pop("num_parameters", None) if training else None
    lines = [
        "---",
        "library_name: transformers",
        f"license: {license}",
        "tags: [audio, speech, audio-tokenizer, pqvae, product-quantization]",
        "pipeline_tag: feature-extraction",
        "---",
        f"# {model_name}",
        "",
        "A PQ-VAE speech tokenizer (dual-decoding product-quantized VAE, Guo et al., arXiv 2406.02940), built with"
        " [pqvae-hf]. Load it without installing anything but torch and transformers:",
        "",
        "```python",
        "from transformers import AutoModel, AutoProcessor",
        f'model = AutoModel.from_pretrained("{model_name}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{model_name}", trust_remote_code=True)',
        f"inputs = processor(audio, sampling_rate={config.sampling_rate}, return_tensors=\"pt\")",
        "codes = model.encode(**inputs).audio_codes          # (batch, num_codebooks, frames)",
        "audio = model.decode(codes, inputs[\"padding_mask\"]).audio_values",
    ]
    if config.mel_vocoder == "neural":
        lines += ["# a log-mel computed from audio (or predicted in its place) -> audio, through the mel vocoder:",
                  "audio = model.vocode_mel(model.front_end(waveform))   # waveform (batch, samples)"]
    lines += [
        "```",
        "",
        "## Configuration",
        "",
        "| setting | value |",
        "|---|---|",
        f"| sampling rate | {config.sampling_rate} Hz |",
        f"| frame (token) rate | {config.frame_rate:g} Hz |",
        f"| quantizer | {config.quantizer_type}, M = {config.num_codebooks} codebooks x N = {config.codebook_size} |",
        f"| composite codebook | {config.composite_codebook_size:,} (N^M) |",
        f"| bits per second | {config.bits_per_second:g} |",
        f"| dual decoding weight | {config.dual_decoding_weight:g} |",
        f"| EMA / k-means init / dead-code threshold | {config.use_ema} / {config.kmeans_init} /"
        f" {config.dead_code_threshold:g} ({config.dead_code_threshold_mode}) |",
        f"| log-mel | {config.num_mel_bins} bins, n_fft {config.n_fft}, hop {config.hop_length} |",
        f"| encoder / decoder | ConvNeXt, {config.num_encoder_layers} / {config.num_decoder_layers} blocks,"
        f" {config.hidden_size} channels |",
        f"| vocoder | {config.vocoder} |",
        *([f"| mel vocoder (true mels, `vocode_mel`) | neural, magnitude prior {config.mel_vocoder_magnitude_prior},"
           f" {config.mel_vocoder_phase_refinement_iters} Griffin-Lim projections |"]
          if config.mel_vocoder == "neural" else []),
        f"| decoded-mel post-filter (`decoded_mel_contrast`) | {config.decoded_mel_contrast:g}"
        f"{' (off)' if config.decoded_mel_contrast == 1 else ': band deviations from the clip mean x this'} |",
    ]
    if parameters:
        lines.append(f"| parameters | {parameters:,} |")
    if training:
        lines += ["", "## Training", ""]
        for key, value in training.items():
            lines.append(f"- {key}: {_format(value)}")
    if metrics:
        lines += ["", "## Evaluation (measured)", "", "| metric | value |", "|---|---|"]
        for key, value in sorted(metrics.items()):
            lines.append(f"| {key} | {_format(value)} |")
    if extra_sections:
        lines += ["", extra_sections.strip()]
    text = "\n".join(lines) + "\n"
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "README.md"), "w") as handle:
        handle.write(text)
    return text
