"""pqvae-hf: a large-codebook speech tokenizer (dual-decoding product-quantized VAE) for Hugging Face.

Importing this package registers the `pqvae` model type with the Auto classes and marks the classes for
remote code, so `save_pretrained` writes the model code and `auto_map` next to the weights.
"""

import os as _os

# In a wheel, setuptools maps the repo's top-level `modeling/` and `conversion/` folders to `pqvae_hf.modeling` and
# `pqvae_hf.conversion`. In a source checkout (or `pip install -e .`) they sit beside this folder: let the package
# find them there too, without installing a top-level `modeling` module anywhere.
_source_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "modeling")) and _os.path.isfile(
    _os.path.join(_source_root, "modeling", "modeling_pqvae.py")
):
    __path__.append(_source_root)

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor  # noqa: E402

from .modeling import (  # noqa: E402
    CodebookStatistics,
    PQVAEConfig,
    PQVAEDecoderOutput,
    PQVAEEncoderOutput,
    PQVAEFeatureExtractor,
    PQVAEModel,
    PQVAEOutput,
    PQVAEPreTrainedModel,
    PQVAEProcessor,
    codes_to_composite,
    composite_to_codes,
)

from .dataset_tokenization import shard_for_this_process, tokenize_dataset  # noqa: E402

__version__ = "0.1.0"

AutoConfig.register("pqvae", PQVAEConfig, exist_ok=True)
AutoModel.register(PQVAEConfig, PQVAEModel, exist_ok=True)
AutoFeatureExtractor.register(PQVAEConfig, PQVAEFeatureExtractor, exist_ok=True)
AutoProcessor.register(PQVAEConfig, PQVAEProcessor, exist_ok=True)

PQVAEConfig.register_for_auto_class()
PQVAEModel.register_for_auto_class("AutoModel")
PQVAEFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
PQVAEProcessor.register_for_auto_class("AutoProcessor")

from .modeling import __all__ as _modeling_all  # noqa: E402

__all__ = [*_modeling_all, "shard_for_this_process", "tokenize_dataset"]
