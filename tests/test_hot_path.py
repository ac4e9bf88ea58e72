"""The training step reads nothing back from the device: on a GPU every such read (`.item()`, `float()`, `bool()`,
`.cpu()`, boolean-mask indexing, `bincount`, `unique`, ...) waits for all queued kernels. Losses and codebook
statistics for logging are accumulated on the device and read once per logging step.

Checked on CPU by intercepting the tensor operations that would synchronise on a GPU."""

import pytest
import torch
from conftest import chirp, tiny_config
from torch.overrides import TorchFunctionMode

from pqvae_hf import PQVAEFeatureExtractor, PQVAEModel

HOST_READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy", "nonzero",
              "masked_select", "bincount", "unique", "unique_consecutive", "argwhere", "_unique2"}


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS:
            self.seen.append(name)
        elif name == "__getitem__" and _has_bool_tensor(args[1:]):
            self.seen.append("boolean-mask indexing")
        elif name == "to" and any(str(a) == "cpu" for a in (*args[1:], *kwargs.values())):
            self.seen.append("to(cpu)")
        return func(*args, **kwargs)


def _has_bool_tensor(index) -> bool:
    if torch.is_tensor(index):
        return index.dtype == torch.bool
    if isinstance(index, (tuple, list)):
        return any(_has_bool_tensor(i) for i in index)
    return False


def _batch(model, seed=0):
    fe = PQVAEFeatureExtractor(sampling_rate=model.config.sampling_rate)
    audio = [chirp(s, model.config.sampling_rate, seed + i) for i, s in enumerate((0.6, 0.35, 0.5))]
    return fe(audio, sampling_rate=model.config.sampling_rate, return_tensors="pt")


@pytest.mark.parametrize("overrides", [dict(), dict(entropy_loss_weight=0.1, subspace_rotation="opq"),
                                       dict(quantizer_type="rvq", num_codebooks=2)])
def test_training_step_reads_nothing_back_from_the_device(tmp_path, overrides):
    from transformers import TrainingArguments

    from pqvae_hf.trainer import PQVAETrainer

    torch.manual_seed(0)
    model = PQVAEModel(tiny_config(dead_code_restart_interval=5, rotation_update_interval=5, **overrides))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, logging_steps=10)
    trainer = PQVAETrainer(model=model, args=args)
    model.train()
    trainer.compute_loss(model, _batch(model, 0)).backward()  # first step: k-means init reads the batch, allowed
    for step in range(2, 5):  # ordinary steps (restarts and rotation updates are due at step 5)
        with HostReads() as reads:
            loss = trainer.compute_loss(model, _batch(model, step))
            loss.backward()
        assert reads.seen == [], (step, reads.seen)
    trainer.log({"loss": 1.0})  # a training log line: reads the accumulated values once
    entry = trainer.state.log_history[-1]
    for key in ("reconstruction_loss", "dual_reconstruction_loss", "commitment_loss", "train_codebook0_perplexity",
                "train_codebook1_usage", "train_composite_perplexity"):
        assert key in entry and isinstance(entry[key], (int, float)), key
    assert ("entropy_loss" in entry) == ("entropy_loss_weight" in overrides)


def test_logged_loss_parts_are_means_over_the_steps_since_the_last_log(tmp_path):
    from transformers import TrainingArguments

    from pqvae_hf.trainer import PQVAETrainer

    torch.manual_seed(0)
    model = PQVAEModel(tiny_config())
    trainer = PQVAETrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                               use_cpu=True))
    model.train()
    parts = []
    for step in range(3):
        outputs = trainer.compute_loss(model, _batch(model, 10 + step), return_outputs=True)[1]
        parts.append(float(outputs.reconstruction_loss))
    trainer.log({"loss": 1.0})
    first = trainer.state.log_history[-1]
    assert first["reconstruction_loss"] == pytest.approx(sum(parts) / 3, rel=1e-6)
    assert 1 <= first["train_codebook0_usage"] <= model.config.codebook_size
    # The window is reset: the next log line covers only what came after.
    outputs = trainer.compute_loss(model, _batch(model, 20), return_outputs=True)[1]
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["reconstruction_loss"] == pytest.approx(
        float(outputs.reconstruction_loss), rel=1e-6)
