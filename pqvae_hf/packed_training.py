# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Single-process training of the tokenizer and of the vocoder from a packed corpus (`pqvae_hf.packed_corpus`).

The whole split lives in one tensor on the training device and batches are random crops cut by index arithmetic,
so an accelerator never waits for file I/O or a data loader. The same code runs on CPU (tests) and GPU (the shipped
recipe). `pqvae_hf.train` (transformers.Trainer) remains the path for Hub datasets, DDP and fine-tuning.

    # tokenizer (dual-decoding PQ-VAE), stopping at max_steps or after time_budget_s, whichever comes first
    python -m pqvae_hf.packed_training tokenizer --pack_dir data/packed --output_dir runs/tok \
        --config_overrides "num_encoder_layers=6,num_decoder_layers=8" --max_steps 20000 --batch_size 32
    # vocoder, adversarial (multi-period + multi-resolution discriminators), on mels decoded from a tokenizer's codes
    python -m pqvae_hf.packed_training vocoder --pack_dir data/packed --output_dir runs/voc --tokenizer runs/tok \
        --decoded_mel_fraction 0.7 --max_steps 10000

Outputs in `output_dir`: `config.json`, the weights as `<name>-part-XXX.safetensors` (parts of at most
`--max_file_mb`, so they pass size-limited transfers; `load_parts` joins them), `training_state.pt` (optimizer,
step, random states: `--resume` continues from it) and `log.json` (settings, loss curve, validation curve, wall time).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .modeling import CodebookStatistics, PQVAEConfig, PQVAEModel
from .modeling.modeling_pqvae import LogMelSpectrogram
from .modeling.vocoder_pqvae import PQVAEVocoder
from .packed_corpus import load_split

# --------------------------------------------------------------------------------------------------------------------
# Weights in size-limited parts
# --------------------------------------------------------------------------------------------------------------------


def save_parts(state: dict[str, torch.Tensor], directory: str, name: str, max_bytes: int) -> list[str]:
    """Write `state` as `name-part-000.safetensors`, ... each at most `max_bytes` (one tensor never split)."""
    for old in glob.glob(os.path.join(directory, f"{name}-part-*.safetensors")):
        os.remove(old)
    parts, current, size = [], {}, 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            parts.append(current)
            current, size = {}, 0
        current[key] = tensor.detach().to("cpu").contiguous()
        size += nbytes
    parts.append(current)
    paths = []
    for number, part in enumerate(parts):
        path = os.path.join(directory, f"{name}-part-{number:03d}.safetensors")
        save_file(part, path)
        paths.append(path)
    return paths


def load_parts(directory: str, name: str) -> dict[str, torch.Tensor]:
    paths = sorted(glob.glob(os.path.join(directory, f"{name}-part-*.safetensors")))
    if not paths:
        raise FileNotFoundError(f"No {name}-part-*.safetensors in {directory}: was the training run saved there?")
    state = {}
    for path in paths:
        state.update(load_file(path))
    return state


def load_vocoder_weights(source: str) -> dict[str, torch.Tensor]:
    """A `PQVAEVocoder` state dict from any place vocoder weights are kept: a `packed_training vocoder` output folder
    (or its `DIR/vocoder` parts prefix), a vocoder `.safetensors`, or a whole model's `model.safetensors` / its
    `from_pretrained` folder (a shipped checkpoint), whose `vocoder.*` weights are taken and the tokenizer's left."""
    directory, name = os.path.split(os.path.normpath(source))
    if os.path.isdir(source) and glob.glob(os.path.join(source, "vocoder-part-*.safetensors")):
        state = load_parts(source, "vocoder")
    elif os.path.isdir(source) and os.path.isfile(os.path.join(source, "model.safetensors")):
        state = load_file(os.path.join(source, "model.safetensors"))
    elif source.endswith(".safetensors"):
        state = load_file(source)
    else:
        state = load_parts(directory, name)
    if any(key.startswith("vocoder.") for key in state):  # a whole model's weights
        state = {key: value for key, value in state.items() if key.startswith("vocoder.")}
    return {key.removeprefix("vocoder."): value for key, value in state.items()}


def load_tokenizer(directory: str, device: str | torch.device = "cpu") -> PQVAEModel:
    """A tokenizer saved by this module (config.json + tokenizer parts), or any `from_pretrained` folder."""
    if glob.glob(os.path.join(directory, "tokenizer-part-*.safetensors")):
        config = PQVAEConfig.from_pretrained(directory)
        model = PQVAEModel(config)
        model.load_state_dict(load_parts(directory, "tokenizer"), strict=False)
    else:
        model = PQVAEModel.from_pretrained(directory)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------------------------
# Data: random crops of an in-memory split
# --------------------------------------------------------------------------------------------------------------------


class CropSampler:
    """Random crops of `crop_samples` from a packed split held in one tensor on `device`.

    A clip is drawn with probability proportional to min(length, crop) (short clips fill a crop with less speech),
    cropped at a uniform offset, zero-padded past its end (the padding mask says where), and scaled by a random gain
    (in dB, limited so the peak stays below 0.99) so the models do not learn one recording level.
    """

    def __init__(self, audio: np.ndarray, clips: list[dict], crop_samples: int, device: torch.device,
                 generator: torch.Generator, gain_db: tuple[float, float] = (-10.0, 4.0)):
        self.audio = torch.from_numpy(np.array(audio, dtype=np.float32)).to(device)  # a writable copy, also of a memory map
        self.starts = torch.tensor([c["start"] for c in clips], device=device)
        self.lengths = torch.tensor([c["length"] for c in clips], device=device)
        self.weights = self.lengths.clamp(max=crop_samples).float().clamp_min(1.0)
        self.crop_samples = crop_samples
        self.device = device
        self.generator = generator
        self.gain_db = gain_db

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> audio (B, crop_samples), padding_mask (B, crop_samples) long."""
        g = self.generator
        chosen = torch.multinomial(self.weights, batch_size, replacement=True, generator=g)
        lengths = self.lengths[chosen]
        slack = (lengths - self.crop_samples).clamp_min(0)
        offsets = (torch.rand(batch_size, device=self.device, generator=g) * (slack + 1).float()).long()
        position = torch.arange(self.crop_samples, device=self.device)
        mask = position[None, :] < lengths[:, None]
        index = (self.starts[chosen] + offsets)[:, None] + position[None, :]
        index = torch.minimum(index, torch.tensor(self.audio.numel() - 1, device=self.device))
        audio = self.audio[index] * mask
        gain_db = torch.empty(batch_size, 1, device=self.device).uniform_(*self.gain_db, generator=g)
        peak = audio.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
        gain = torch.minimum(10 ** (gain_db / 20), 0.99 / peak)
        return audio * gain, mask.long()


def validation_batches(audio: np.ndarray, clips: list[dict], max_samples: int, batch_size: int):
    """Every clip of the split (cut to `max_samples`), sorted by length and batched with right padding."""
    pieces = sorted((audio[c["start"]: c["start"] + min(c["length"], max_samples)] for c in clips if c["length"] > 0),
                    key=len)
    for first in range(0, len(pieces), batch_size):
        group = pieces[first: first + batch_size]
        longest = max(len(p) for p in group)
        batch = np.zeros((len(group), longest), dtype=np.float32)
        mask = np.zeros((len(group), longest), dtype=np.int64)
        for row, piece in enumerate(group):
            batch[row, : len(piece)] = piece
            mask[row, : len(piece)] = 1
        yield torch.from_numpy(batch), torch.from_numpy(mask)


# --------------------------------------------------------------------------------------------------------------------
# Shared loop pieces
# --------------------------------------------------------------------------------------------------------------------


class Schedule:
    """Linear warm-up, then cosine decay to `final_fraction` of the peak. Progress is the larger of step / max_steps
    and elapsed / time_budget_s, so a run cut by its time budget still ends at the low learning rate."""

    def __init__(self, max_steps: int, warmup_steps: int, time_budget_s: float | None, final_fraction: float = 0.0):
        self.max_steps, self.warmup_steps = max_steps, warmup_steps
        self.time_budget_s, self.final_fraction = time_budget_s, final_fraction

    def progress(self, step: int, elapsed: float) -> float:
        progress = step / self.max_steps
        if self.time_budget_s:
            progress = max(progress, elapsed / self.time_budget_s)
        return min(progress, 1.0)

    def factor(self, step: int, elapsed: float) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress(step, elapsed)))
        return self.final_fraction + (1 - self.final_fraction) * cosine


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


def parse_overrides(text: str | None) -> dict:
    """'a=1,b=x,c=true' -> {'a': 1, 'b': 'x', 'c': True} (ints, floats, booleans, strings). Typed by the fields of
    `PQVAEConfig`: a whole number for a float field becomes a float (the strict config refuses an int there), and
    'none' is None only for an optional non-string field (mel_fmax=none), so vocoder=none stays the string."""
    annotations = {}
    for cls in reversed(PQVAEConfig.__mro__):
        annotations.update(getattr(cls, "__annotations__", {}))
    result = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        if not _:
            raise ValueError(f"Config override {item!r} must look like name=value.")
        for cast in (int, float):
            try:
                result[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            result[key.strip()] = {"true": True, "false": False}.get(value.lower(), value)
        annotation = str(annotations.get(key.strip(), ""))
        if "float" in annotation and type(result[key.strip()]) is int:
            result[key.strip()] = float(result[key.strip()])
        if value.lower() == "none" and "None" in annotation and "str" not in annotation:  # vocoder="none" stays
            result[key.strip()] = None
    return result


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        # TF32 convolutions/matmuls: about 3x faster than fp32 on Ampere/Hopper, far below the training noise.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def _write_json(path: str, payload: dict) -> None:
    with open(path + ".tmp", "w") as handle:
        json.dump(payload, handle, indent=1)
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_tokenizer(model: PQVAEModel, batches) -> dict:
    """Log-mel L1 of decode(encode(x)) against the front-end's log-mel of x over valid frames, and code statistics."""
    was_training = model.training
    model.eval()
    stats = CodebookStatistics(model.config.num_codebooks, model.config.codebook_size)
    error_sum, count = 0.0, 0
    for audio, mask in batches:
        audio, mask = audio.to(model.device), mask.to(model.device)
        encoded = model.encode(audio[:, None], mask)
        mel = model.decode(encoded.audio_codes, mask, return_waveform=False).mel
        target = model.front_end(audio * mask)
        weights = encoded.frame_mask[:, None, :].float()
        error_sum += float(((mel - target).abs() * weights).sum())
        count += float(weights.sum()) * mel.shape[1]
        stats.update(encoded.audio_codes, encoded.frame_mask)
    model.train(was_training)
    summary = stats.compute()
    return {"mel_l1": error_sum / max(count, 1.0), **{k: summary[k] for k in (
        "codebook_usage_fraction", "codebook_perplexity", "composite_usage", "composite_perplexity")}}


class MelAdversary:
    """The tokenizer's optional mel GAN (`--mel_adversarial_weight W`): a `MelDiscriminator` learns to tell the decoded
    log-mel from the true one, and the decoder gets W x its least-squares generator loss plus
    `--mel_feature_matching_weight` x feature matching, on top of the L1 reconstruction loss (which keeps the content
    right; the adversary pushes against its flattening). The discriminator trains from the first step; the decoder feels
    it from `--mel_adversarial_start_step`, so it is not pushed by a discriminator that knows nothing yet."""

    def __init__(self, config: PQVAEConfig, args, device: torch.device):
        from .discriminators import MelDiscriminator

        self.discriminator = MelDiscriminator(math.log(config.log_floor)).to(device)
        self.optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=args.learning_rate, betas=(0.8, 0.99),
                                           weight_decay=0.01)
        self.adversarial_weight = args.mel_adversarial_weight
        self.feature_matching_weight = args.mel_feature_matching_weight
        self.start_step = args.mel_adversarial_start_step
        self.max_grad_norm = args.max_grad_norm

    def set_learning_rate(self, value: float) -> None:
        set_learning_rate(self.optimizer, value)

    def step(self, mel: torch.Tensor, target_mel: torch.Tensor, frame_mask: torch.Tensor,
             step: int) -> dict[str, torch.Tensor]:
        """One discriminator update on (target, detached prediction); returns the decoder's adversarial loss (with
        gradient, under "generator_loss") and detached parts to log."""
        from .discriminators import discriminator_loss, feature_matching_loss, generator_adversarial_loss

        real_scores, real_features = self.discriminator(target_mel, frame_mask)
        fake_scores, _ = self.discriminator(mel.detach(), frame_mask)
        loss_d = discriminator_loss([real_scores], [fake_scores])
        self.optimizer.zero_grad(set_to_none=True)
        loss_d.backward()
        torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.max_grad_norm)
        self.optimizer.step()
        parts = {"mel_discriminator": loss_d.detach()}
        if step < self.start_step:
            parts["generator_loss"] = mel.new_zeros(())
            return parts
        fake_scores, fake_features = self.discriminator(mel, frame_mask)
        adversarial = generator_adversarial_loss([fake_scores])
        matching = feature_matching_loss([real_features], [fake_features])
        parts.update(mel_adversarial=adversarial.detach(), mel_feature_matching=matching.detach(),
                     generator_loss=self.adversarial_weight * adversarial + self.feature_matching_weight * matching)
        return parts

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


def train_tokenizer(args) -> dict:
    device = _device(args.device)
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    overrides = parse_overrides(args.config_overrides)
    if args.init_from:
        model = load_tokenizer(args.init_from, device)
    else:
        model = PQVAEModel(PQVAEConfig(**{"vocoder": "none", **overrides})).to(device)
    config = model.config
    audio, clips, rate = load_split(args.pack_dir, "train", args.num_workers, args.cache_dir)
    if rate != config.sampling_rate:
        raise ValueError(f"The pack is at {rate} Hz but the model expects {config.sampling_rate} Hz; re-pack it.")
    val_audio, val_clips, _ = load_split(args.pack_dir, args.eval_split, args.num_workers, args.cache_dir)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    sampler = CropSampler(audio, clips, int(args.crop_seconds * rate), device, generator)
    val_batches = list(validation_batches(val_audio, val_clips, int(args.eval_max_seconds * rate), args.eval_batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  betas=(0.9, 0.99))
    schedule = Schedule(args.max_steps, args.warmup_steps, args.time_budget_s)
    log = {"settings": vars(args), "config": config.to_dict(), "train": [], "eval": [],
           "num_parameters": sum(p.numel() for p in model.parameters()), "device": str(device)}
    mel_gan = MelAdversary(config, args, device) if args.mel_adversarial_weight > 0 else None
    step, elapsed_before = 0, 0.0
    state_path = os.path.join(args.output_dir, "training_state.pt")
    if args.resume and os.path.isfile(state_path):
        state = torch.load(state_path, map_location=device, weights_only=False)  # our own file, written below
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if (mel_gan is None) != (state.get("mel_adversary") is None):
            raise ValueError(f"{state_path} was written {'with' if mel_gan is None else 'without'}"
                             " --mel_adversarial_weight; resume it with the settings it started with (or start a new"
                             " --output_dir).")
        if mel_gan is not None:
            mel_gan.load_state_dict(state["mel_adversary"])
        generator.set_state(state["generator"].cpu())
        step, elapsed_before, log = state["step"], state["elapsed"], state["log"]
        # The quantizer's k-means init and dead-code restarts draw from torch's global generator.
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        print(f"[tokenizer] resumed at step {step}", flush=True)

    def save() -> None:
        config.save_pretrained(args.output_dir)
        save_parts(model.state_dict(), args.output_dir, "tokenizer", args.max_file_mb * 2**20)
        _write_json(os.path.join(args.output_dir, "log.json"), log)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": time.perf_counter() - start + elapsed_before, "log": log,
                    "mel_adversary": None if mel_gan is None else mel_gan.state_dict(),
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}, state_path)

    model.train()
    start = time.perf_counter()
    running: dict[str, float] = {}
    while True:
        elapsed = time.perf_counter() - start + elapsed_before
        if step >= args.max_steps or (args.time_budget_s and elapsed >= args.time_budget_s):
            break
        if args.stop_at_step and step >= args.stop_at_step:
            print(f"[tokenizer] stopping at step {step} of {args.max_steps}; continue with --resume", flush=True)
            save()
            return log
        set_learning_rate(optimizer, args.learning_rate * schedule.factor(step, elapsed))
        batch, mask = sampler.batch(args.batch_size)
        output = model(batch[:, None], mask)
        loss = output.loss
        if mel_gan is not None:
            mel_gan.set_learning_rate(args.learning_rate * schedule.factor(step, elapsed))
            adversarial_terms = mel_gan.step(output.mel, output.target_mel, output.frame_mask, step)
            loss = loss + adversarial_terms.pop("generator_loss")
            for key, value in adversarial_terms.items():
                running[key] = running.get(key, 0.0) + value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        step += 1
        for key in ("loss", "reconstruction_loss", "dual_reconstruction_loss", "commitment_loss"):
            running[key] = running.get(key, 0.0) + getattr(output, key).detach()
        if step % args.logging_steps == 0:
            entry = {"step": step, "elapsed_s": round(elapsed, 1),
                     **{k: round(float(v) / args.logging_steps, 5) for k, v in running.items()},
                     "usage": [round(float(u), 3) for u in output.codebook_usage]}
            log["train"].append(entry)
            running = {}
            print(f"[tokenizer] {json.dumps(entry)}", flush=True)
        if step % args.eval_steps == 0:
            log["eval"].append({"step": step, "elapsed_s": round(elapsed, 1), **evaluate_tokenizer(model, val_batches)})
            print(f"[tokenizer] eval {json.dumps(log['eval'][-1])}", flush=True)
            save()
    log["steps"] = step
    log["train_wall_time_s"] = round(time.perf_counter() - start + elapsed_before, 1)
    log["final_eval"] = {"step": step, **evaluate_tokenizer(model, val_batches)}
    if args.corpus_dir:  # the pack is a training copy; what counts is the model on the original files
        from .evaluation import evaluate_split_tokens

        original, _, _ = evaluate_split_tokens(model, dataset_dir=args.corpus_dir, split=args.eval_split,
                                               split_column="split", progress=False)
        log["final_eval"]["original_files"] = original["tokens"]
    print(f"[tokenizer] final {json.dumps(log['final_eval'])}", flush=True)
    save()
    return log


# --------------------------------------------------------------------------------------------------------------------
# Vocoder (adversarial)
# --------------------------------------------------------------------------------------------------------------------


def train_vocoder(args) -> dict:
    from .discriminators import (
        MultiPeriodDiscriminator,
        MultiResolutionDiscriminator,
        discriminator_loss,
        feature_matching_loss,
        generator_adversarial_loss,
    )
    from .vocoder_training import MultiResolutionSTFTLoss, PhaseDerivativeLoss

    device = _device(args.device)
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    tokenizer = load_tokenizer(args.tokenizer, device) if args.tokenizer else None
    base = tokenizer.config.to_dict() if tokenizer is not None else {}
    config = PQVAEConfig(**{**base, **parse_overrides(args.config_overrides), "vocoder": "neural"})
    if tokenizer is not None:
        # The vocoder learns from the mels `decode` will feed it under this run's config, post-filter included
        # (`--config_overrides decoded_mel_contrast=1.1` trains on post-filtered token mels).
        tokenizer.config.decoded_mel_contrast = config.decoded_mel_contrast
    vocoder = PQVAEVocoder(config).to(device)
    if args.init_vocoder:
        vocoder.load_state_dict(load_vocoder_weights(args.init_vocoder), strict=True)
        if args.restart_magnitude_from_prior:
            vocoder.reset_magnitude_correction()
    front_end = LogMelSpectrogram(config).to(device)
    mpd, mrd = MultiPeriodDiscriminator().to(device), MultiResolutionDiscriminator().to(device)
    stft_loss = MultiResolutionSTFTLoss().to(device)
    phase_loss = PhaseDerivativeLoss(config).to(device)
    gen_opt = torch.optim.AdamW(vocoder.parameters(), lr=args.learning_rate, betas=(0.8, 0.99), weight_decay=0.01)
    disc_opt = torch.optim.AdamW([*mpd.parameters(), *mrd.parameters()], lr=args.learning_rate, betas=(0.8, 0.99),
                                 weight_decay=0.01)
    audio, clips, rate = load_split(args.pack_dir, "train", args.num_workers, args.cache_dir)
    val_audio, val_clips, _ = load_split(args.pack_dir, args.eval_split, args.num_workers, args.cache_dir)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    segment = int(args.segment_seconds * rate) // config.hop_length * config.hop_length
    sampler = CropSampler(audio, clips, segment, device, generator)
    val_batches = list(validation_batches(val_audio, val_clips[:: max(1, len(val_clips) // args.eval_clips)],
                                          int(args.eval_max_seconds * rate), args.eval_batch_size))
    schedule = Schedule(args.max_steps, args.warmup_steps, args.time_budget_s, final_fraction=0.1)
    log = {"settings": vars(args), "config": config.to_dict(), "train": [], "eval": [], "device": str(device),
           "num_parameters": sum(p.numel() for p in vocoder.parameters())}

    def vocoder_input(batch: torch.Tensor, mask: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """True log-mel, replaced by the tokenizer's decoded log-mel for the examples flagged in `decoded`."""
        true_mel = front_end(batch)
        if tokenizer is None or not bool(decoded.any()):
            return true_mel
        with torch.no_grad():
            encoded = tokenizer.encode(batch[decoded, None], mask[decoded])
            token_mel = tokenizer.decode(encoded.audio_codes, mask[decoded], return_waveform=False).mel
            token_mel = tokenizer.postfilter_mel(token_mel, encoded.frame_mask)  # as `decode` feeds its vocoder
        mel = true_mel.clone()
        # Frames past a short clip's end keep the true (silent) mel: they are padding, not tokens.
        mel[decoded] = torch.where(encoded.frame_mask[:, None, :].bool(), token_mel, true_mel[decoded])
        return mel

    @torch.no_grad()
    def evaluate() -> dict:
        vocoder.eval()
        result = {}
        for kind in (["true_mel", "token_mel"] if tokenizer is not None else ["true_mel"]):
            mel_err, stft_err, frequency_err, delay_err, batches = 0.0, 0.0, 0.0, 0.0, 0
            for batch, mask in val_batches:
                batch, mask = batch.to(device), mask.to(device)
                usable = (batch.shape[1] - 1) // config.hop_length * config.hop_length
                batch, mask = batch[:, :usable + 1], mask[:, :usable + 1]
                decoded = torch.full((batch.shape[0],), kind == "token_mel", device=device)
                wave, _, phase = vocoder.synthesize(vocoder_input(batch, mask, decoded))
                target = batch[:, : wave.shape[1]]
                mel_err += float((front_end(wave) - front_end(target)).abs().mean())
                stft_err += float(sum(stft_loss(wave, target)))
                frequency, delay = phase_loss(phase, target)
                frequency_err, delay_err = frequency_err + float(frequency), delay_err + float(delay)
                batches += 1
            result[kind] = {"mel_l1": mel_err / batches, "mr_stft": stft_err / batches,
                            "inst_freq_error": frequency_err / batches, "group_delay_error": delay_err / batches}
        vocoder.train()
        return result

    def save() -> None:
        config.save_pretrained(args.output_dir)
        save_parts({f"vocoder.{k}": v for k, v in vocoder.state_dict().items()}, args.output_dir, "vocoder",
                   args.max_file_mb * 2**20)
        _write_json(os.path.join(args.output_dir, "log.json"), log)

    start, step, running = time.perf_counter(), 0, {}
    vocoder.train()
    while True:
        elapsed = time.perf_counter() - start
        if step >= args.max_steps or (args.time_budget_s and elapsed >= args.time_budget_s):
            break
        factor = schedule.factor(step, elapsed)
        set_learning_rate(gen_opt, args.learning_rate * factor)
        set_learning_rate(disc_opt, args.learning_rate * factor)
        batch, mask = sampler.batch(args.batch_size)
        decoded = torch.rand(args.batch_size, device=device, generator=generator) < args.decoded_mel_fraction
        log_mel = vocoder_input(batch, mask, decoded)
        prediction, _, phase = vocoder.synthesize(log_mel)
        target = batch[:, : prediction.shape[1]]
        adversarial = step >= args.adversarial_start_step
        if adversarial:
            fake = prediction.detach()
            loss_d = sum(discriminator_loss(d(target)[0], d(fake)[0]) for d in (mpd, mrd))
            disc_opt.zero_grad(set_to_none=True)
            loss_d.backward()
            torch.nn.utils.clip_grad_norm_([*mpd.parameters(), *mrd.parameters()], args.max_grad_norm)
            disc_opt.step()
        mel_l1 = (front_end(prediction) - front_end(target)).abs().mean()
        convergence, log_l1 = stft_loss(prediction, target)
        loss_g = args.mel_weight * mel_l1 + args.stft_weight * (convergence + log_l1)
        parts = {"mel_l1": mel_l1.detach(), "mr_stft": (convergence + log_l1).detach()}
        if args.phase_weight > 0:
            # A magnitude-only loss leaves the phase to whatever keeps the STFT consistent; the phase derivatives of
            # the true audio are what the mel cannot say and the listener hears (see PhaseDerivativeLoss).
            if args.phase_loss_on == "output":
                frequency, delay = phase_loss.output_errors(prediction, target)
            else:
                frequency, delay = phase_loss(phase, target)
            loss_g = loss_g + args.phase_weight * (frequency + delay)
            parts.update(inst_freq_error=frequency.detach(), group_delay_error=delay.detach())
        if adversarial:
            adv, fm = 0.0, 0.0
            for d in (mpd, mrd):
                real_scores, real_features = d(target)
                fake_scores, fake_features = d(prediction)
                adv = adv + generator_adversarial_loss(fake_scores)
                fm = fm + feature_matching_loss(real_features, fake_features)
            loss_g = loss_g + adv + args.feature_matching_weight * fm
            parts.update(adversarial=adv.detach(), feature_matching=fm.detach(), discriminator=loss_d.detach())
        gen_opt.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(vocoder.parameters(), args.max_grad_norm)
        gen_opt.step()
        step += 1
        for key, value in parts.items():
            running[key] = running.get(key, 0.0) + value
        if step % args.logging_steps == 0:
            entry = {"step": step, "elapsed_s": round(elapsed, 1),
                     **{k: round(float(v) / args.logging_steps, 4) for k, v in running.items()}}
            log["train"].append(entry)
            running = {}
            print(f"[vocoder] {json.dumps(entry)}", flush=True)
        if step % args.eval_steps == 0:
            log["eval"].append({"step": step, **evaluate()})
            print(f"[vocoder] eval {json.dumps(log['eval'][-1])}", flush=True)
            save()
    log["steps"] = step
    log["train_wall_time_s"] = round(time.perf_counter() - start, 1)
    log["final_eval"] = {"step": step, **evaluate()}
    print(f"[vocoder] final {json.dumps(log['final_eval'])}", flush=True)
    save()
    return log


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name in ("tokenizer", "vocoder"):
        p = sub.add_parser(name)
        p.add_argument("--pack_dir", required=True)
        p.add_argument("--output_dir", required=True)
        p.add_argument("--config_overrides", default=None, help="e.g. 'num_encoder_layers=6,codebook_dim=16'")
        p.add_argument("--device", default="auto")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max_steps", type=int, default=10000)
        p.add_argument("--time_budget_s", type=float, default=None, help="stop (and end the schedule) after this")
        p.add_argument("--warmup_steps", type=int, default=200)
        p.add_argument("--max_grad_norm", type=float, default=1.0)
        p.add_argument("--logging_steps", type=int, default=200)
        p.add_argument("--eval_steps", type=int, default=1000)
        p.add_argument("--eval_split", default="validation")
        p.add_argument("--eval_batch_size", type=int, default=32)
        p.add_argument("--num_workers", type=int, default=4, help="processes decoding the pack's shards")
        p.add_argument("--cache_dir", default=None, help="keep the decoded pack here (shared by several runs)")
        p.add_argument("--max_file_mb", type=int, default=15, help="largest weight file written")
    tok = sub.choices["tokenizer"]
    tok.add_argument("--init_from", default=None, help="continue from a tokenizer folder")
    tok.add_argument("--batch_size", type=int, default=32)
    tok.add_argument("--crop_seconds", type=float, default=2.0)
    tok.add_argument("--learning_rate", type=float, default=1e-3)
    tok.add_argument("--weight_decay", type=float, default=0.01)
    tok.add_argument("--eval_max_seconds", type=float, default=8.0)
    tok.add_argument("--resume", action="store_true", help="continue from output_dir/training_state.pt")
    tok.add_argument("--mel_adversarial_weight", type=float, default=0.0,
                     help="> 0: train a MelDiscriminator beside the tokenizer (see MelAdversary); 0 = off")
    tok.add_argument("--mel_feature_matching_weight", type=float, default=0.0)
    tok.add_argument("--mel_adversarial_start_step", type=int, default=200)
    tok.add_argument("--corpus_dir", default=None,
                     help="the corpus the pack was built from: the final evaluation also reads its original files")
    tok.add_argument("--stop_at_step", type=int, default=None,
                     help="save and stop at this step, keeping the schedule of --max_steps (a run in several parts)")
    voc = sub.choices["vocoder"]
    voc.add_argument("--tokenizer", default=None, help="tokenizer folder whose decoded mels the vocoder learns from")
    voc.add_argument("--init_vocoder", default=None,
                     help="vocoder weights: a vocoder run's folder or DIR/vocoder, a .safetensors file, or a checkpoint")
    voc.add_argument("--restart_magnitude_from_prior", action="store_true",
                     help="after loading --init_vocoder (trained without a magnitude prior), zero its magnitude rows so "
                          "training starts from the prior; needs --config_overrides "
                          "vocoder_magnitude_prior=mel_pseudo_inverse")
    voc.add_argument("--decoded_mel_fraction", type=float, default=0.0)
    voc.add_argument("--batch_size", type=int, default=16)
    voc.add_argument("--segment_seconds", type=float, default=1.0)
    voc.add_argument("--learning_rate", type=float, default=2e-4)
    voc.add_argument("--mel_weight", type=float, default=45.0)
    voc.add_argument("--stft_weight", type=float, default=1.0)
    voc.add_argument("--phase_weight", type=float, default=0.0,
                     help="weight of the anti-wrapped instantaneous-frequency + group-delay errors of the predicted "
                          "phase against the target audio's (APNet's phase losses); 0 = magnitude losses only")
    voc.add_argument("--phase_loss_on", choices=("prediction", "output"), default="prediction",
                     help="score the phase the network predicts (anti-wrapped angles) or that of its output waveform's "
                          "STFT (chord distances; what is heard, after the inverse STFT's overlap-add)")
    voc.add_argument("--feature_matching_weight", type=float, default=2.0)
    voc.add_argument("--adversarial_start_step", type=int, default=0)
    voc.add_argument("--eval_clips", type=int, default=64)
    voc.add_argument("--eval_max_seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.stage == "vocoder" and args.decoded_mel_fraction > 0 and not args.tokenizer:
        parser.error("--decoded_mel_fraction > 0 needs --tokenizer (whose codes the mels are decoded from).")
    (train_tokenizer if args.stage == "tokenizer" else train_vocoder)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
