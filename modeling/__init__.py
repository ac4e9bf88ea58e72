"""PQ-VAE model code: the self-contained payload that `save_pretrained` copies next to the weights."""

from .configuration_pqvae import PQVAEConfig
from .feature_extraction_pqvae import PQVAEFeatureExtractor
from .modeling_pqvae import (
    PQVAEDecoderOutput,
    PQVAEEncoderOutput,
    PQVAEModel,
    PQVAEOutput,
    PQVAEPreTrainedModel,
)
from .processing_pqvae import PQVAEProcessor
from .quantization_pqvae import CodebookStatistics, codes_to_composite, composite_to_codes

__all__ = [
    "CodebookStatistics",
    "PQVAEConfig",
    "PQVAEDecoderOutput",
    "PQVAEEncoderOutput",
    "PQVAEFeatureExtractor",
    "PQVAEModel",
    "PQVAEOutput",
    "PQVAEPreTrainedModel",
    "PQVAEProcessor",
    "codes_to_composite",
    "composite_to_codes",
]
