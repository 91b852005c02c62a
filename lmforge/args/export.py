"""Arguments of `lmforge export` (ms-swift's names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import ModelArgs, TemplateArgs, check_output_path
from lmforge.args.parse import arg
from lmforge.errors import ArgumentError

QUANT_METHODS = ('awq', 'gptq', 'bnb', 'fp8')
GGUF_TYPES = ('f16', 'bf16', 'f32', 'q8_0', 'q4_k_m')
# bits each method can produce (the first is the default)
QUANT_BITS = {'awq': (4,), 'gptq': (4, 8), 'bnb': (4, 8), 'fp8': (8,)}


@dataclass
class ExportArgs(TemplateArgs, ModelArgs):
    """Merge LoRA adapters, quantize, convert to GGUF / Ollama, push to a hub.

    Steps run in this order, each on the previous one's result: merge -> quantize | GGUF -> Ollama -> push.
    The merge is checked: the merged model's logits must match the adapter model's (--merge_tolerance). With
    --torch_dtype auto it is done in float32 and saved in the base model's own dtype.
    Examples: lmforge export --adapters output/checkpoint-100 --merge_lora true
              lmforge export --adapters output/checkpoint-100 --to_gguf true --gguf_type q4_k_m --to_ollama true
              lmforge export --model Qwen/Qwen2.5-7B-Instruct --use_hf --quant_method gptq --quant_bits 4 \\
                  --dataset calib.jsonl
              lmforge export --model merged_dir --push_to_hub true --hub_model_id me/my-model --use_hf
    """
    command = 'export'
    adapters: list[str] = arg(help='LoRA checkpoint(s) to apply to --model (--model may itself be a LoRA '
                                   'checkpoint: its base is found)', factory=list)
    output_dir: Optional[str] = arg(None, 'where the result goes; default: next to the checkpoint/model, named '
                                          '<name>-merged, <name>-<method>-int<bits> or <name>-gguf')
    exist_ok: bool = arg(False, 'write into an --output_dir that already exists (its files are replaced)')
    merge_lora: bool = arg(False, 'merge the adapters into the base weights and save a plain transformers model')
    merge_tolerance: Optional[float] = arg(None, 'largest |logit difference| allowed between the adapter model and '
                                                 'the merged one; default 1e-4 in float32, 2% of the largest '
                                                 '|logit| in bfloat16/float16')
    quant_method: Optional[str] = arg(None, 'quantize the (merged) model (needs a CUDA GPU)', choices=QUANT_METHODS)
    quant_bits: Optional[int] = arg(None, 'bits per weight: awq 4, gptq 4|8, bnb 4|8, fp8 8', choices=(4, 8))
    dataset: list[str] = arg(help='calibration data for awq/gptq (and the perplexity report): chat or text files, '
                                  '`path#N` for N rows', factory=list)
    quant_n_samples: int = arg(128, 'calibration rows used')
    max_length: int = arg(2048, 'longest calibration row in tokens')
    to_gguf: bool = arg(False, 'write a GGUF file (llama.cpp, Ollama, LM Studio)')
    gguf_type: str = arg('f16', 'GGUF weight type: f16/bf16/f32, q8_0, or q4_k_m (llama.cpp\'s mix of Q4_K and '
                                'Q6_K)', choices=GGUF_TYPES)
    to_ollama: bool = arg(False, 'write an Ollama Modelfile (the chat template as a Go template, stop tokens)')
    push_to_hub: bool = arg(False, 'upload the result to ModelScope, or the Hugging Face Hub with --use_hf')
    hub_model_id: Optional[str] = arg(None, 'repository to push to, e.g. me/my-model')
    hub_private_repo: bool = arg(False, 'create the repository as private')
    commit_message: str = arg('upload model with lmforge', 'commit message of the upload')

    def validate(self):
        if not self.model and not self.adapters:
            raise ArgumentError('model', 'is required: a model directory, hub id, or a checkpoint (or --adapters)')
        if self.quant_bits is not None and not self.quant_method:
            raise ArgumentError('quant_bits', 'needs --quant_method')
        if not any((self.merge_lora, self.quant_method, self.to_gguf, self.to_ollama, self.push_to_hub)):
            raise ArgumentError('', 'nothing to do: pass --merge_lora true, --quant_method, --to_gguf true, '
                                    '--to_ollama true or --push_to_hub true')
        if self.quant_method:
            allowed = QUANT_BITS[self.quant_method]
            if self.quant_bits is None:
                self.quant_bits = allowed[0]
            if self.quant_bits not in allowed:
                raise ArgumentError('quant_bits', f'{self.quant_method} makes {"/".join(map(str, allowed))}-bit '
                                                  f'weights, not {self.quant_bits}')
            if self.to_gguf:
                raise ArgumentError('to_gguf', f'is made from the full-precision model, not from a '
                                               f'{self.quant_method} one: run two exports (GGUF has its own '
                                               'quantized types: --gguf_type q8_0|q4_k_m)')
            if self.quant_method in ('awq', 'gptq') and not self.dataset:
                raise ArgumentError('dataset', f'{self.quant_method} needs calibration data: --dataset FILE '
                                               '(a few hundred rows of text like the model will see)')
        if self.push_to_hub and not self.hub_model_id:
            raise ArgumentError('hub_model_id', 'is required with --push_to_hub (e.g. me/my-model)')
        if self.quant_n_samples <= 0:
            raise ArgumentError('quant_n_samples', f'must be positive, got {self.quant_n_samples}')
        if self.max_length <= 1:
            raise ArgumentError('max_length', f'must be at least 2, got {self.max_length}')
        if self.merge_tolerance is not None and self.merge_tolerance <= 0:
            raise ArgumentError('merge_tolerance', f'must be positive, got {self.merge_tolerance}')
        check_output_path(self.output_dir, 'output_dir')
