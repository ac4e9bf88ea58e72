"""`transformers.Trainer` for PQ-VAE: dual-decoding loss, data-set-wide codebook metrics, model cards."""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from .evaluation import DatasetClips, accumulate_reconstruction
from .modeling import CodebookStatistics
from .model_card import write_model_card


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_statistics(stats: CodebookStatistics) -> CodebookStatistics:
    """The statistics of all ranks together: sub-codebook counts summed, composite counts merged."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, stats)
    merged = CodebookStatistics(stats.num_codebooks, stats.codebook_size)
    for rank_stats in gathered:
        merged.merge(rank_stats)
    return merged


def codebook_metrics(stats: CodebookStatistics, prefix: str) -> dict[str, float]:
    """Flattens CodebookStatistics.compute() into scalar log entries."""
    result = stats.compute()
    metrics = {}
    for index in range(stats.num_codebooks):
        metrics[f"{prefix}codebook{index}_usage"] = result["codebook_usage"][index]
        metrics[f"{prefix}codebook{index}_usage_fraction"] = result["codebook_usage_fraction"][index]
        metrics[f"{prefix}codebook{index}_perplexity"] = result["codebook_perplexity"][index]
    metrics[f"{prefix}composite_usage"] = result["composite_usage"]
    metrics[f"{prefix}composite_perplexity"] = result["composite_perplexity"]
    metrics[f"{prefix}product_of_codebook_perplexities"] = result["product_of_codebook_perplexities"]
    return metrics


class CodebookUsageTracker:
    """Per-sub-codebook usage and perplexity of the training frames seen since the previous log line.

    The trainer feeds it every batch's codes (`observe`); at each logging step it adds `train_codebook*` entries to
    the log. Index collapse shows up here long before it shows in the loss. `observe` only keeps the (detached)
    codes on their device; they are counted on the CPU at the logging step, so training steps never wait for the
    device (a few kB of codes per step).
    """

    def __init__(self, num_codebooks: int, codebook_size: int):
        self.stats = CodebookStatistics(num_codebooks, codebook_size)
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def observe(self, audio_codes: torch.Tensor, frame_mask: torch.Tensor) -> None:
        self.pending.append((audio_codes.detach(), frame_mask.detach()))

    def pop_metrics(self) -> dict[str, float]:
        for audio_codes, frame_mask in self.pending:
            self.stats.update(audio_codes, frame_mask)
        self.pending.clear()
        stats = gather_statistics(self.stats) if _distributed() else self.stats
        metrics = codebook_metrics(stats, "train_") if stats.num_frames else {}
        self.stats.reset()
        return metrics


class LossPartsTracker:
    """Means of the loss parts over the training steps since the previous log line, summed on the device and read
    once per log line (a per-step `float()` would make every step wait for the device)."""

    def __init__(self):
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None
        self.steps = 0

    def observe(self, parts: dict[str, torch.Tensor]) -> None:
        values = torch.stack([value.detach().float().reshape(()) for value in parts.values()])
        if self.sums is None or list(parts) != self.names:
            self.pop_metrics()
            self.names, self.sums = list(parts), torch.zeros_like(values)
        self.sums += values
        self.steps += 1

    def pop_metrics(self) -> dict[str, float]:
        metrics = {}
        if self.sums is not None and self.steps:
            metrics = {name: value / self.steps for name, value in zip(self.names, self.sums.tolist())}
        self.sums, self.steps = None, 0
        return metrics


class EpochSetterCallback(TrainerCallback):
    """Tells the collator the epoch, so random crops differ per epoch yet stay reproducible on resume."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class PQVAETrainer(Trainer):
    """Trainer whose evaluation reports reconstruction and codebook metrics accumulated over the whole eval set.

    Args (besides Trainer's):
        processor: the `PQVAEProcessor` saved into every checkpoint and the final folder. (Not passed to Trainer as
            `processing_class`: Trainer 5.x assumes a ProcessorMixin has a tokenizer and fails on audio-only ones.)
        eval_data_collator: the `AudioCollator` whose audio column, sampling rate and `crop_seconds` (first N seconds;
            None: whole clips) evaluation uses; defaults to `data_collator`.
        eval_chunk_seconds: evaluation sorts clips by length, batches them, and evaluates clips longer than this in
            chunks with context (`evaluation.accumulate_reconstruction`): memory stays bounded whatever the lengths.
        eval_split_names: metric prefix -> split name (`{"eval": "validation"}`), used to name bad files.
        model_card_info: dict of extra facts for the model card (data description, command, ...).
    """

    def __init__(self, *args, processor=None, eval_data_collator=None, model_card_info: dict | None = None,
                 eval_chunk_seconds: float = 30.0, eval_split_names: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_chunk_seconds = eval_chunk_seconds
        self.eval_split_names = dict(eval_split_names or {})
        self.processor = processor
        self.eval_data_collator = eval_data_collator or self.data_collator
        self.model_card_info = dict(model_card_info or {})
        config = self.model.config
        self.usage_tracker = CodebookUsageTracker(config.num_codebooks, config.codebook_size)
        self.loss_parts_tracker = LossPartsTracker()
        self.last_eval_metrics: dict[str, float] = {}

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.processor is not None:
            self.processor.save_pretrained(output_dir or self.args.output_dir)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:  # accumulated on the device, read at the next log line
            self.usage_tracker.observe(outputs.audio_codes, outputs.frame_mask)
            parts = {
                "reconstruction_loss": outputs.reconstruction_loss,
                "dual_reconstruction_loss": outputs.dual_reconstruction_loss,
                "commitment_loss": outputs.commitment_loss,
            }
            if self.model.config.entropy_loss_weight > 0 and getattr(outputs, "entropy_loss", None) is not None:
                parts["entropy_loss"] = outputs.entropy_loss
            self.loss_parts_tracker.observe(parts)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log line: loss parts and codebook picture of the steps since the last one
            logs = {**logs, **self.loss_parts_tracker.pop_metrics(), **self.usage_tracker.pop_metrics()}
        super().log(logs, start_time)

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset.")
        start = time.time()
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        if _distributed():
            dataset = dataset.shard(num_shards=dist.get_world_size(), index=dist.get_rank(), contiguous=True)
        config = model.config
        collator = self.eval_data_collator  # an AudioCollator: its column, rate, first-N-seconds crop and notes
        clips = DatasetClips(dataset, config.sampling_rate, collator.audio_column,
                             split=self.eval_split_names.get(metric_key_prefix), crop_seconds=collator.crop_seconds,
                             notes=collator.notes)
        quiet = self.args.disable_tqdm or not self.is_local_process_zero()
        result = accumulate_reconstruction(model, clips, self.args.per_device_eval_batch_size, self.eval_chunk_seconds,
                                           num_workers=self.args.dataloader_num_workers, progress=not quiet)
        totals, stats = result.sums.to(self.args.device), result.stats
        if _distributed():
            dist.all_reduce(totals)
            stats = gather_statistics(stats)
        totals = totals.cpu()
        frames = max(float(totals[0]), 1.0)
        prefix = f"{metric_key_prefix}_"
        metrics = {
            f"{prefix}loss": float(totals[4]) / frames,
            f"{prefix}mel_l1": float(totals[1]) / frames,
            f"{prefix}mel_l2": float(totals[2]) / frames,
            f"{prefix}frames": int(totals[0]),
            f"{prefix}bits_per_second": config.bits_per_second,
            **codebook_metrics(stats, prefix),
        }
        if config.dual_decoding_weight > 0:
            metrics[f"{prefix}dual_reconstruction_loss"] = float(totals[3]) / frames
        metrics[f"{prefix}runtime"] = round(time.time() - start, 3)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.last_eval_metrics = metrics
        if was_training:
            model.train()
        return metrics

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        """Writes our own README.md (config summary, data, measured metrics) instead of Trainer's generic card."""
        if not self.is_world_process_zero():
            return
        write_model_card(
            self.args.output_dir,
            self.accelerator.unwrap_model(self.model).config,
            metrics=self.last_eval_metrics,
            model_name=model_name or os.path.basename(os.path.normpath(self.args.output_dir)),
            training={"steps": self.state.global_step, **self.model_card_info},
        )
        with open(os.path.join(self.args.output_dir, "eval_results.json"), "w") as handle:
            json.dump(self.last_eval_metrics, handle, indent=2)
