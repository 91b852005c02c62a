"""Arguments of `lmforge eval` (ms-swift's names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import GenerationArgs, ModelArgs, TemplateArgs, check_output_path
from lmforge.args.parse import arg
from lmforge.errors import ArgumentError

EVAL_BACKENDS = ('lm_eval',)


@dataclass
class EvalArgs(GenerationArgs, TemplateArgs, ModelArgs):
    """Evaluate a model (directory, hub id or checkpoint) or a running OpenAI-compatible server.

    --eval_dataset takes benchmark names of the harness (mmlu ceval gsm8k arc hellaswag ...), lm-eval YAML task
    files or directories (local data), and custom .jsonl files: multiple choice (question, choices, answer ->
    accuracy) or open QA (question/query, answer/response -> exact match, BLEU, ROUGE-L).
    Examples: lmforge eval --model output/checkpoint-100 --eval_dataset arc gsm8k --eval_limit 100
              lmforge eval --eval_url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-0.5B-Instruct --eval_dataset mmlu
              lmforge eval --model out/checkpoint-100 --eval_dataset my_mcq.jsonl my_qa.jsonl
    """
    command = 'eval'
    adapters: list[str] = arg(help='LoRA checkpoint(s) to apply to --model', factory=list)
    eval_dataset: list[str] = arg(help='benchmarks (harness task/group names), lm-eval YAML task files/dirs, or '
                                       'custom .jsonl files', factory=list)
    eval_limit: Optional[int] = arg(None, 'evaluate at most N rows of each task / file')
    eval_url: Optional[str] = arg(None, 'evaluate a running OpenAI-compatible server (e.g. lmforge serve) at this '
                                        'base URL (http://HOST:PORT/v1) instead of loading the model; --model then '
                                        'only supplies the tokenizer')
    eval_url_api: str = arg('completions', 'the server API the harness uses: completions (log-likelihood and '
                                           'generation tasks) or chat (generation tasks only)',
                            choices=('completions', 'chat'))
    served_model_name: Optional[str] = arg(None, 'with --eval_url: the model name sent in requests; default: the '
                                                 "server's first model (GET /models)")
    api_key: Optional[str] = arg(None, 'with --eval_url: bearer token; default: the OPENAI_API_KEY environment '
                                       'variable')
    eval_backend: str = arg('lm_eval', 'harness for benchmarks and YAML tasks (custom .jsonl files are scored by '
                                       'lmforge itself)', choices=EVAL_BACKENDS)
    eval_num_fewshot: Optional[int] = arg(None, 'few-shot examples per question; default: each task\'s own')
    apply_chat_template: bool = arg(False, 'harness tasks: wrap prompts in the chat template (custom .jsonl files '
                                           'always use it)')
    eval_output_dir: str = arg('eval_output', 'where the JSON report and per-row predictions go (a timestamped '
                                              'subdirectory)')
    max_batch_size: int = arg(16, 'rows evaluated together')
    seed: int = arg(42, 'random seed (few-shot sampling, generation)')

    def validate(self):
        if not self.eval_dataset:
            raise ArgumentError('eval_dataset', 'is required: benchmark names, YAML task files or .jsonl files')
        if not self.model and not self.adapters and not self.eval_url:
            raise ArgumentError('model', 'is required: a model directory, hub id or checkpoint (or --eval_url)')
        if self.eval_url and self.adapters:
            raise ArgumentError('adapters', 'cannot apply to a server (--eval_url): serve the adapter instead')
        if self.eval_url and not self.eval_url.startswith(('http://', 'https://')):
            raise ArgumentError('eval_url', f'expected http(s)://HOST:PORT/v1, got {self.eval_url!r}')
        if self.eval_limit is not None and self.eval_limit <= 0:
            raise ArgumentError('eval_limit', f'must be positive, got {self.eval_limit}')
        if self.eval_num_fewshot is not None and self.eval_num_fewshot < 0:
            raise ArgumentError('eval_num_fewshot', f'must be >= 0, got {self.eval_num_fewshot}')
        if self.max_batch_size <= 0:
            raise ArgumentError('max_batch_size', f'must be positive, got {self.max_batch_size}')
        check_output_path(self.eval_output_dir, 'eval_output_dir')
        self.validate_generation()
