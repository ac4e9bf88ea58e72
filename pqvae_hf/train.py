"""Train or fine-tune a PQ-VAE speech tokenizer with `transformers.Trainer`.

    pqvae-train --do_train --do_eval --dataset_dir DIR --split_column split --output_dir out --max_steps 2000 \
        --per_device_train_batch_size 16 --learning_rate 1e-3 --config_overrides "num_codebooks=2,codebook_size=256"
    python -m pqvae_hf.train args.json                      # the same arguments as a JSON file
    torchrun --nproc_per_node 2 -m pqvae_hf.train ...       # DDP (gloo on CPU, NCCL on GPUs)

Every TrainingArguments flag works (learning-rate schedule, warm-up, logging/eval/save steps, push_to_hub, ...).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import transformers
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments, set_seed

from . import PQVAEConfig, PQVAEFeatureExtractor, PQVAEModel, PQVAEProcessor
from .data import AudioCollator, BadAudioReport, add_index_column, drop_bad_audio, load_audio_dataset, materialize
from .packed_training import parse_overrides
from .trainer import EpochSetterCallback, PQVAETrainer

logger = logging.getLogger("pqvae_hf.train")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Checkpoint (folder or Hub id) to fine-tune. Leave empty to train from scratch."})
    config_name: str | None = field(default=None, metadata={
        "help": "Config (config.json, its folder, or Hub id) for training from scratch; default PQVAEConfig()."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Comma-separated key=value config overrides, e.g. 'num_codebooks=4,codebook_size=16'."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Do not train the encoder."})
    freeze_codebooks: bool = field(default=False, metadata={"help": "Keep codewords fixed (no EMA/restarts)."})
    train_decoder_only: bool = field(default=False, metadata={
        "help": "Fine-tune the decoder only (freezes encoder and codebooks): tokens stay exactly the same."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id (load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_dir: str | None = field(default=None, metadata={
        "help": "Local audiofolder (metadata.csv with file_name), save_to_disk folder or folder of parquet files."})
    audio_column: str = field(default="audio", metadata={"help": "Column holding the audio."})
    train_split: str = field(default="train", metadata={"help": "Training split (or value of --split_column)."})
    eval_split: str | None = field(default="validation", metadata={"help": "Evaluation split; empty for none."})
    test_split: str | None = field(default=None, metadata={"help": "Optional split evaluated once after training."})
    split_column: str | None = field(default=None, metadata={
        "help": "Select splits by this column's value (e.g. 'split') instead of named splits."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N eval rows."})
    crop_seconds: float = field(default=2.0, metadata={
        "help": "Random training crop length; shorter clips are zero-padded (masked), never dropped."})
    eval_crop_seconds: float | None = field(default=None, metadata={
        "help": "Evaluate on the first N seconds of each clip; default: whole clips."})
    eval_chunk_seconds: float = field(default=30.0, metadata={
        "help": "Clips longer than this are evaluated chunk by chunk (bounded memory, whatever the clip length)."})
    skip_bad_audio: bool = field(default=False, metadata={
        "help": "Check every file first and skip those that cannot be used (missing, undecodable, empty, truncated,"
                " NaN): each is logged, the count reported and the list written to OUTPUT_DIR/bad_audio.json."
                " Default: the first bad file stops the run with its name and the fix."})
    preprocessing_num_workers: int | None = field(default=None, metadata={
        "help": "Processes for checking audio files with --skip_bad_audio."})
    streaming: bool = field(default=False, metadata={
        "help": "Stream the training split (datasets' streaming=True: rows are read as training goes, nothing is"
                " downloaded up front); needs --max_steps. Evaluation splits are streamed into a local Arrow file"
                " first (evaluation sorts clips by length). Resuming replays the stream past the batches trained on:"
                " exact within the first pass over it. Not with --skip_bad_audio: a stream cannot be checked before"
                " training."})
    shuffle_buffer_size: int = field(default=1000, metadata={
        "help": "With --streaming: rows held in the shuffle buffer of the training stream (seeded by --seed)."})


def build_model(args: ModelArguments) -> tuple[PQVAEModel, PQVAEProcessor]:
    if args.model_name_or_path:
        if args.config_overrides:
            raise ValueError("--config_overrides applies to training from scratch; fine-tuning keeps the config.")
        model = PQVAEModel.from_pretrained(args.model_name_or_path)
        try:
            processor = AutoProcessor.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError, TypeError):
            processor = None
    else:
        base = PQVAEConfig.from_pretrained(args.config_name).to_dict() if args.config_name else PQVAEConfig().to_dict()
        overrides = parse_overrides(args.config_overrides)
        unknown = set(overrides) - set(PQVAEConfig().to_dict())
        if unknown:
            raise ValueError(f"Unknown config fields in --config_overrides: {sorted(unknown)}.")
        config = PQVAEConfig.from_dict({**base, **overrides})
        model = PQVAEModel(config)
        processor = None
    config = model.config
    if processor is None:
        processor = PQVAEProcessor(PQVAEFeatureExtractor(sampling_rate=config.sampling_rate),
                                   num_codebooks=config.num_codebooks, codebook_size=config.codebook_size)
    if args.freeze_encoder or args.train_decoder_only:
        model.freeze_encoder()
    if args.freeze_codebooks or args.train_decoder_only:
        model.freeze_codebooks()
    return model, processor


def require_training_extras() -> None:
    """`pqvae-train` needs the `train` extra (accelerate, datasets): say how to get it, not transformers' message."""
    missing = []
    for name in ("accelerate", "datasets"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"pqvae-train needs the training extras, which are not installed (missing: {', '.join(missing)})."
                         ' Install them with: pip install "pqvae-hf[train]" (in a source checkout: pip install -e'
                         ' ".[train]").')


def run(argv: list[str] | None = None) -> dict:
    """Parses the arguments, trains and/or evaluates, and returns the metrics (what `main` logs)."""
    argv = sys.argv[1:] if argv is None else argv
    require_training_extras()
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # The collator needs the raw audio column, which model.forward does not take.
    training_args.remove_unused_columns = False
    training_args.label_names = []

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.enable_explicit_format()
    set_seed(training_args.seed)

    if not (training_args.do_train or training_args.do_eval or data_args.test_split):
        raise ValueError("Nothing to do: pass --do_train and/or --do_eval (or --test_split).")
    if data_args.streaming:
        if training_args.do_train and training_args.max_steps <= 0:
            raise ValueError("--streaming needs --max_steps N (a stream has no length, so epochs cannot be counted).")
        if data_args.skip_bad_audio:
            raise ValueError("--skip_bad_audio checks every file before training, which a stream cannot do: drop"
                             " --streaming to check them, or drop --skip_bad_audio (a bad file then stops the run"
                             " with its row and the fix).")
        if data_args.shuffle_buffer_size < 1:
            raise ValueError(f"--shuffle_buffer_size must be >= 1, got {data_args.shuffle_buffer_size}.")
    model, processor = build_model(model_args)
    config = model.config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(f"PQ-VAE: {config.quantizer_type} M={config.num_codebooks} N={config.codebook_size} "
                f"(composite {config.composite_codebook_size:,}), {config.bits_per_second:g} bit/s, "
                f"{total:,} parameters ({trainable:,} trainable)")

    source = dict(dataset_name=data_args.dataset_name, dataset_dir=data_args.dataset_dir,
                  dataset_config_name=data_args.dataset_config_name, split_column=data_args.split_column,
                  audio_column=data_args.audio_column, cache_dir=None)
    bad_audio = BadAudioReport()

    def load(split: str, max_samples: int | None = None, for_training: bool = False):
        # With --streaming the training split is streamed; so are a Hub dataset's evaluation splits (loading them
        # would download every split's files, the training split's too), then read into a local Arrow file.
        streamed = data_args.streaming and (for_training or data_args.dataset_name is not None)
        # The index column numbers rows as loaded, so messages and the bad-audio report name the same row numbers.
        dataset = add_index_column(load_audio_dataset(split=split, max_samples=max_samples, streaming=streamed,
                                                      **source))
        if data_args.skip_bad_audio:
            dataset = drop_bad_audio(dataset, data_args.audio_column, split, bad_audio,
                                     data_args.preprocessing_num_workers)
        if streamed and for_training:
            # Trainer does not shuffle a stream; set_epoch (called by Trainer) reseeds the buffer every epoch.
            dataset = dataset.shuffle(seed=training_args.seed, buffer_size=data_args.shuffle_buffer_size)
        elif streamed:
            dataset = materialize(dataset, f"Reading split {split!r}")
        return dataset

    train_dataset = eval_dataset = test_dataset = None
    if training_args.do_train:
        train_dataset = load(data_args.train_split, data_args.max_train_samples, for_training=True)
        if data_args.streaming:
            logger.info(f"Training on a stream of split {data_args.train_split!r} for {training_args.max_steps:,}"
                        f" steps (shuffle buffer {data_args.shuffle_buffer_size:,} rows)")
        else:
            logger.info(f"Training on {len(train_dataset):,} clips ({_hours(train_dataset):.2f} h where known)")
    if data_args.eval_split:
        eval_dataset = load(data_args.eval_split, data_args.max_eval_samples)
        logger.info(f"Evaluating on {len(eval_dataset):,} clips ({_hours(eval_dataset):.2f} h where known)")
    if data_args.test_split:
        test_dataset = load(data_args.test_split)
    if data_args.skip_bad_audio:
        report = os.path.join(training_args.output_dir, "bad_audio.json")
        if training_args.should_save:
            bad_audio.write(report)
        logger.warning(f"--skip_bad_audio: {bad_audio.summary()}; list in {report}")

    train_collator = AudioCollator(config.sampling_rate, data_args.audio_column, data_args.crop_seconds,
                                   random_crop=True, seed=training_args.seed, split=data_args.train_split)
    eval_collator = AudioCollator(config.sampling_rate, data_args.audio_column, data_args.eval_crop_seconds,
                                  random_crop=False)
    command = "pqvae-train " + " ".join(argv)
    trainer = PQVAETrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        eval_chunk_seconds=data_args.eval_chunk_seconds,
        eval_split_names={"eval": data_args.eval_split, "test": data_args.test_split},
        processor=processor,
        callbacks=[EpochSetterCallback(train_collator)],
        model_card_info={
            "data": data_args.dataset_name or data_args.dataset_dir,
            "train split": (f"{data_args.train_split} (streamed)" if data_args.streaming and train_dataset is not None
                            else f"{data_args.train_split} ({len(train_dataset) if train_dataset else 0} clips)"),
            "command": f"`{command}`",
            "num_parameters": total,
            **({"bad audio": bad_audio.summary()} if data_args.skip_bad_audio else {}),
        },
    )

    results = {"bad_audio_skipped": len(bad_audio.files)} if data_args.skip_bad_audio else {}
    if train_dataset is not None:
        start = time.time()
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        results["train_wall_seconds"] = round(time.time() - start, 1)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        logger.info(f"Decoding: {train_collator.notes.summary()}; crops: {dict(train_collator.counts)}")
        trainer.model_card_info["train wall time (s)"] = results["train_wall_seconds"]
    if eval_dataset is not None:
        results.update(trainer.evaluate(eval_dataset))
    if test_dataset is not None:
        results.update(trainer.evaluate(test_dataset, metric_key_prefix="test"))
    if trainer.is_world_process_zero():
        trainer.last_eval_metrics = {k: v for k, v in results.items()
                                     if k not in ("train_wall_seconds", "bad_audio_skipped")}
        trainer.create_model_card()
        trainer.save_metrics("all", results)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message=f"PQ-VAE trained for {trainer.state.global_step} steps")
    return results


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`pqvae-train`): exit status 0 on success; a bad argument or bad data exits non-zero with
    the reason (no traceback)."""
    try:
        run(argv)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"pqvae-train: {error}")
    return 0


def _hours(dataset) -> float:
    if "duration_s" in dataset.column_names:
        return float(sum(dataset["duration_s"])) / 3600
    return float("nan")


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    sys.exit(main())
