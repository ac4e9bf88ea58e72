"""Checks of the GPU path (issue: half precision, compile, autocast training) on a CUDA machine.

    python scripts/gpu_checks.py [--checkpoint checkpoints/pqvae-speech-small] [--output gpu_checks.json]

On the demo clip: fp32 vs bf16 / fp16 loading (code agreement, mel difference), batched vs single decode,
`torch.compile(fullgraph=True)` of encode / decode against eager, and 30 training steps under bf16 autocast (the
quantizer must stay float32). Prints and writes one JSON; exits non-zero if CUDA is missing.
"""

import argparse
import json
import sys
import time

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, ".")
from pqvae_hf import PQVAEModel  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="checkpoints/pqvae-speech-small")
    parser.add_argument("--audio", default="assets/speech_orig_16k.flac")
    parser.add_argument("--output", default="gpu_checks.json")
    parser.add_argument("--device", default="cuda", help="cpu for a dry run of this script")
    parser.add_argument("--skip_compile", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    audio, rate = sf.read(args.audio, dtype="float32")
    wave = torch.from_numpy(audio)[None, None].to(device)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}

    reference = PQVAEModel.from_pretrained(args.checkpoint).to(device).eval()
    with torch.no_grad():
        codes = reference.encode(wave).audio_codes
        mel = reference.decode(codes).mel
        for dtype in (torch.bfloat16, torch.float16):
            model = PQVAEModel.from_pretrained(args.checkpoint, dtype=dtype).to(device).eval()
            half_codes = model.encode(wave).audio_codes  # float32 audio in: the front-end runs in float32
            decoded = model.decode(codes)
            result[str(dtype)] = {
                "code_agreement": float((half_codes == codes).float().mean()),
                "mel_mean_abs_difference_same_codes": float((decoded.mel.float() - mel).abs().mean()),
                "audio_dtype": str(decoded.audio_values.dtype),
                "audio_finite": bool(torch.isfinite(decoded.audio_values).all()),
            }

        # Batched decode of a short and a long clip equals decoding the short one alone.
        short = wave[..., : wave.shape[-1] // 3]
        batch = torch.zeros(2, 1, wave.shape[-1], device=device)
        batch[0, :, : short.shape[-1]] = short
        batch[1] = wave[0]
        mask = torch.zeros(2, wave.shape[-1], dtype=torch.long, device=device)
        mask[0, : short.shape[-1]] = 1
        mask[1] = 1
        batched = reference.decode(reference.encode(batch, mask).audio_codes, mask).audio_values[0, 0, : short.shape[-1]]
        alone = reference.decode(reference.encode(short).audio_codes,
                                 torch.ones(1, short.shape[-1], dtype=torch.long, device=device)).audio_values[0, 0]
        result["batched_vs_alone_max_abs_difference"] = float((batched - alone).abs().max())

        # Compiled encode / decode as single graphs.
        try:
            if args.skip_compile:
                raise RuntimeError("skipped (--skip_compile)")
            start = time.perf_counter()
            encode = torch.compile(reference.encode, fullgraph=True)
            decode = torch.compile(reference.decode, fullgraph=True)
            compiled_codes = encode(wave).audio_codes
            compiled_audio = decode(compiled_codes).audio_values
            eager_audio = reference.decode(codes).audio_values
            result["compile_fullgraph"] = {
                "code_agreement": float((compiled_codes == codes).float().mean()),
                "audio_max_abs_difference": float((compiled_audio - eager_audio).abs().max()),
                "compile_and_first_call_s": round(time.perf_counter() - start, 1),
            }
        except Exception as error:  # report, do not hide
            result["compile_fullgraph"] = {"error": f"{type(error).__name__}: {error}"[:500]}

    # Training steps under bf16 autocast: the quantizer's search and EMA stay float32.
    config = reference.config.to_dict()
    config["vocoder"] = "none"
    model = PQVAEModel(type(reference.config).from_dict(config)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator(device=device).manual_seed(0)
    crops = 32000
    losses = []
    for _ in range(30):
        starts = torch.randint(0, wave.shape[-1] - crops, (8,), device=device, generator=generator)
        batch = torch.stack([wave[0, 0, s: s + crops] for s in starts.tolist()])[:, None]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            output = model(batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(float(output.loss.detach()))
    quantizer_dtypes = sorted({str(t.dtype) for t in model.quantizer.state_dict().values() if t.is_floating_point()})
    result["bf16_autocast_training"] = {"first_loss": losses[0], "last_loss": losses[-1],
                                        "all_finite": all(np.isfinite(losses)),
                                        "quantizer_state_dtypes": quantizer_dtypes}
    print(json.dumps(result, indent=1))
    with open(args.output, "w") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
