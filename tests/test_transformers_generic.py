"""transformers' own generic model tests (ModelTesterMixin, ConfigTester) run against PQVAEModel.

The suite comes from the transformers sdist on PyPI (tests/transformers_suite.py fetches it). Skipped, as in
transformers' EnCodec tester, only where the test needs something an audio tokenizer does not have: token input
embeddings. Everything else runs, including batching equivalence, hidden states, save/load, dtype and
gradient-checkpointing tests.
"""

import sys
import unittest

import pytest
import torch
from conftest import TINY
from transformers_suite import package_root

try:
    sys.path.insert(0, str(package_root()))
except Exception as error:  # noqa: BLE001 - any failure to fetch the suite is a skip with its cause
    pytest.skip(f"transformers' generic test suite unavailable: {error}", allow_module_level=True)

from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor  # noqa: E402

from pqvae_hf import PQVAEConfig, PQVAEModel  # noqa: E402


class PQVAEModelTester:
    """Tiny config, a batch of 4 clips of 1,024 samples, the last one half padding."""

    def __init__(self, parent, batch_size: int = 4, num_samples: int = 1024):
        self.parent = parent
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.is_training = True
        self.hidden_size = TINY["hidden_size"]
        self.num_hidden_layers = TINY["num_encoder_layers"]  # encoder and decoder alike in TINY
        self.seq_length = self.encoder_seq_length = num_samples // TINY["hop_length"] + 1  # frames

    def get_config(self) -> PQVAEConfig:
        # `is_encoder_decoder` tells the generic hidden-state tests to read `encoder_hidden_states` and
        # `decoder_hidden_states` (our output's fields) rather than `hidden_states`; the model ignores the flag.
        return PQVAEConfig(**TINY, is_encoder_decoder=True)

    def prepare_config_and_inputs(self):
        input_values = floats_tensor([self.batch_size, 1, self.num_samples], scale=0.5)
        padding_mask = torch.ones(self.batch_size, self.num_samples, dtype=torch.long)
        padding_mask[-1, self.num_samples // 2:] = 0
        return self.get_config(), {"input_values": input_values, "padding_mask": padding_mask}

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()


class PQVAEModelGenericTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (PQVAEModel,)
    is_encoder_decoder = True
    has_attentions = False
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = PQVAEModelTester(self)
        self.config_tester = ConfigTester(self, config_class=PQVAEConfig, has_text_modality=False,
                                          common_properties=[], **TINY)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="PQ-VAE takes audio, not token ids: it has no input embeddings (as EnCodec)")
    def test_model_get_set_embeddings(self):
        pass


class PQVAEWithVocodersModelTester(PQVAEModelTester):
    """The same, with both vocoders as in the shipped checkpoint: a neural token vocoder and a true-mel vocoder with
    the magnitude prior and phase refinement."""

    def get_config(self) -> PQVAEConfig:
        return PQVAEConfig(**TINY, is_encoder_decoder=True, vocoder="neural", vocoder_hidden_size=16,
                           vocoder_intermediate_size=32, vocoder_num_layers=1, mel_vocoder="neural",
                           mel_vocoder_magnitude_prior="mel_pseudo_inverse", mel_vocoder_phase_refinement_iters=2)


class PQVAEWithVocodersGenericTest(PQVAEModelGenericTest):
    """The generic init / save / load / dtype / device tests again, covering the vocoders' weights and buffers."""

    def setUp(self):
        super().setUp()
        self.model_tester = PQVAEWithVocodersModelTester(self)

    @unittest.skip(reason="the config tests do not depend on the vocoders (run once, above)")
    def test_config(self):
        pass

    # `forward` is the tokenizer's training pass (log-mel losses): the vocoders, trained separately and merged into
    # the checkpoint, get no gradient from it, which these tests require of every trainable parameter.
    @unittest.skip(reason="the vocoders are trained separately: forward gives them no gradient")
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip(reason="the vocoders are trained separately: forward gives them no gradient")
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @unittest.skip(reason="the vocoders are trained separately: forward gives them no gradient")
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass
