"""Arguments of `lmforge sft` and `lmforge pt` (ms-swift's names where they exist)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import ModelArgs, TemplateArgs
from lmforge.args.parse import arg
from lmforge.errors import ArgumentError

TUNER_TYPES = ('lora', 'full')
TRUNCATION = ('delete', 'left', 'right')
LOSS_SCALES = ('default', 'last_round', 'all', 'ignore_empty_think')
SCHEDULERS = ('linear', 'cosine', 'cosine_with_restarts', 'polynomial', 'constant', 'constant_with_warmup',
              'inverse_sqrt', 'reduce_lr_on_plateau', 'cosine_with_min_lr', 'warmup_stable_decay')


@dataclass
class DataArgs:
    dataset: list[str] = arg(help='training data: files (jsonl/json/csv/parquet), dirs or hub ids; `path#N` samples '
                                  'N rows', factory=list)
    val_dataset: list[str] = arg(help='validation data, same forms as --dataset', factory=list)
    split_dataset_ratio: float = arg(0.0, 'fraction of --dataset held out for validation when no --val_dataset')
    max_length: int = arg(2048, 'longest tokenized row; longer rows follow --truncation_strategy')
    truncation_strategy: str = arg('delete', 'rows over --max_length: delete them, or cut tokens on the left/right',
                                   choices=TRUNCATION)
    dataset_num_proc: int = arg(1, 'processes for tokenizing the dataset')
    columns: Optional[dict] = arg(None, 'rename dataset columns, JSON: \'{"src": "dst"}\'')
    packing: bool = arg(False, 'pack several rows into each --max_length sequence (attention never crosses rows)')
    padding_free: Optional[bool] = arg(None, 'train each batch as one unpadded row with per-sample position ids; '
                                             'default: on where the attention supports it')


@dataclass
class TunerArgs:
    tuner_type: str = arg('lora', 'how the model is trained: LoRA adapters or all parameters', choices=TUNER_TYPES)
    lora_rank: int = arg(8, 'LoRA rank r')
    lora_alpha: int = arg(32, 'LoRA scaling alpha')
    lora_dropout: float = arg(0.05, 'dropout on the LoRA input')
    target_modules: list[str] = arg(help='modules that get adapters: all-linear, or names/regex',
                                    factory=lambda: ['all-linear'])
    modules_to_save: list[str] = arg(help='extra modules trained fully and saved with the adapter', factory=list)
    adapters: list[str] = arg(help='LoRA checkpoint(s) to continue training from', factory=list)


@dataclass
class TrainArgs:
    output_dir: str = arg('output', 'where checkpoints, logs and plots go')
    overwrite_output_dir: bool = arg(False, 'reuse an --output_dir that holds a different run')
    resume_from_checkpoint: Optional[str] = arg(None, 'checkpoint dir to resume from, or "latest" in --output_dir')
    num_train_epochs: float = arg(3.0, 'passes over the training data')
    max_steps: int = arg(-1, 'optimizer steps; overrides --num_train_epochs when > 0')
    per_device_train_batch_size: int = arg(1, 'rows per device per forward pass')
    per_device_eval_batch_size: int = arg(1, 'rows per device per evaluation forward pass')
    gradient_accumulation_steps: int = arg(1, 'forward passes per optimizer step')
    learning_rate: Optional[float] = arg(None, 'peak learning rate; default 1e-4 for LoRA, 1e-5 for full')
    lr_scheduler_type: str = arg('cosine', 'learning-rate schedule', choices=SCHEDULERS)
    warmup_ratio: float = arg(0.0, 'fraction of the steps spent warming the learning rate up')
    warmup_steps: int = arg(0, 'warm-up steps (wins over --warmup_ratio when > 0)')
    weight_decay: float = arg(0.1, 'AdamW weight decay')
    max_grad_norm: float = arg(1.0, 'gradient clipping norm')
    optim: str = arg('adamw_torch', 'optimizer name as transformers knows it')
    save_steps: int = arg(500, 'save a checkpoint every N steps (and at the end)')
    save_total_limit: Optional[int] = arg(None, 'keep at most N checkpoints (oldest removed)')
    eval_steps: Optional[int] = arg(None, 'evaluate every N steps; default --save_steps')
    logging_steps: int = arg(5, 'log metrics every N steps')
    seed: int = arg(42, 'random seed of model init, data order and dropout')
    data_seed: Optional[int] = arg(None, 'seed of the data order; default --seed')
    gradient_checkpointing: bool = arg(True, 'recompute activations in backward to save memory')
    report_to: list[str] = arg(help='tensorboard | wandb | swanlab | none; default tensorboard where installed',
                               factory=lambda: ['auto'])
    dataloader_num_workers: int = arg(0, 'data-loading worker processes')
    use_logits_to_keep: Optional[bool] = arg(None, 'compute the LM head only on trained positions; '
                                                   'default: on where the model supports it')

    def validate_train(self):
        positive = ('per_device_train_batch_size', 'per_device_eval_batch_size', 'gradient_accumulation_steps',
                    'save_steps', 'logging_steps')
        for name in positive:
            if getattr(self, name) <= 0:
                raise ArgumentError(name, f'must be positive, got {getattr(self, name)}')
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ArgumentError('max_steps', 'and --num_train_epochs are both 0: set one of them to train at all')
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ArgumentError('learning_rate', f'must be positive, got {self.learning_rate}')
        if not 0 <= self.warmup_ratio < 1:
            raise ArgumentError('warmup_ratio', f'must be in [0, 1), got {self.warmup_ratio}')
        if self.save_total_limit is not None and self.save_total_limit <= 0:
            raise ArgumentError('save_total_limit', f'must be positive, got {self.save_total_limit}')
        if self.eval_steps is not None and self.eval_steps <= 0:
            raise ArgumentError('eval_steps', f'must be positive, got {self.eval_steps}')
        report = [r for r in self.report_to if r not in ('auto', 'none', 'tensorboard', 'wandb', 'swanlab')]
        if report:
            raise ArgumentError('report_to', f'unknown backend {report[0]!r}; choose tensorboard, wandb, swanlab, '
                                             'none')


@dataclass
class SftArgs(TrainArgs, TunerArgs, DataArgs, TemplateArgs, ModelArgs):
    """Supervised fine-tuning on chat data: the loss is taken on the assistant's tokens only.

    Example: lmforge sft --model Qwen/Qwen2.5-7B-Instruct --dataset data.jsonl --tuner_type lora
    """
    command = 'sft'
    loss_scale: str = arg('default', 'which assistant turns train: default/all = every assistant turn, last_round = '
                                     'the last one, ignore_empty_think = skip empty <think></think> blocks',
                          choices=LOSS_SCALES)

    def validate(self):
        self.validate_model()
        if not self.dataset:
            raise ArgumentError('dataset', 'is required: one or more data files, dirs or hub ids')
        if self.lora_rank <= 0:
            raise ArgumentError('lora_rank', f'must be positive, got {self.lora_rank}')
        if self.lora_alpha <= 0:
            raise ArgumentError('lora_alpha', f'must be positive, got {self.lora_alpha}')
        if not 0 <= self.lora_dropout < 1:
            raise ArgumentError('lora_dropout', f'must be in [0, 1), got {self.lora_dropout}')
        if self.max_length <= 1:
            raise ArgumentError('max_length', f'must be at least 2, got {self.max_length}')
        if not 0 <= self.split_dataset_ratio < 1:
            raise ArgumentError('split_dataset_ratio', f'must be in [0, 1), got {self.split_dataset_ratio}')
        if self.dataset_num_proc <= 0:
            raise ArgumentError('dataset_num_proc', f'must be positive, got {self.dataset_num_proc}')
        if self.adapters and self.tuner_type != 'lora':
            raise ArgumentError('adapters', 'continues LoRA training: use it with --tuner_type lora')
        self.validate_train()

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.tuner_type == 'lora' else 1e-5


@dataclass
class PtArgs(SftArgs):
    """Pre-training / continued pre-training on plain text: the loss is taken on every token.

    Example: lmforge pt --model Qwen/Qwen2.5-0.5B --dataset corpus.jsonl --tuner_type full --packing true
    """
    command = 'pt'
    tuner_type: str = arg('full', 'how the model is trained: all parameters or LoRA adapters', choices=TUNER_TYPES)
