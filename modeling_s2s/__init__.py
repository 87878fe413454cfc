"""modeling_s2s: attention-based RNN encoder–decoders as native Hugging Face transformers models.

Importing the package registers `S2SConfig` with `AutoConfig` (model type ``"attention_s2s"``) and the models with
`AutoModel` / `AutoModelForSeq2SeqLM`, and marks them for `auto_map` so `save_pretrained` writes the remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_s2s import S2SConfig
from .modeling_s2s import (
    AttentionMemory,
    S2SAttention,
    S2SDecoderCache,
    S2SEncoderOutput,
    S2SForConditionalGeneration,
    S2SModel,
    S2SPreTrainedModel,
    shift_tokens_right,
)
from .pipeline_s2s import S2STextToTextPipeline, register_pipeline, save_for_pipeline

AutoConfig.register(S2SConfig.model_type, S2SConfig, exist_ok=True)
AutoModel.register(S2SConfig, S2SModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(S2SConfig, S2SForConditionalGeneration, exist_ok=True)
S2SConfig.register_for_auto_class()
S2SModel.register_for_auto_class("AutoModel")
S2SForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
register_pipeline()  # pipeline("s2s-text2text", model=...)

__version__ = "0.1.0"

__all__ = [
    "AttentionMemory",
    "S2SAttention",
    "S2SConfig",
    "S2SDecoderCache",
    "S2SEncoderOutput",
    "S2SForConditionalGeneration",
    "S2SModel",
    "S2SPreTrainedModel",
    "S2STextToTextPipeline",
    "save_for_pipeline",
    "shift_tokens_right",
]
