"""Arguments of `lmforge sft` and `lmforge pt` (ms-swift's names where they exist)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import ModelArgs, TemplateArgs, check_output_path
from lmforge.args.distributed import DistributedArgs
from lmforge.args.parse import arg
from lmforge.errors import ArgumentError
from lmforge.hub import check_adapter_dir

TUNER_TYPES = ('lora', 'full', 'adalora', 'vera', 'boft', 'fourierft', 'miss', 'bone', 'adapter', 'llamapro',
               'longlora', 'reft')
INIT_WEIGHTS = ('true', 'false', 'gaussian', 'pissa', 'olora', 'loftq')
QUANT_METHODS = ('bnb', 'hqq', 'eetq')
QUANTIZABLE_TUNERS = ('lora', 'longlora', 'adalora', 'vera', 'boft', 'fourierft', 'miss', 'bone')
REFT_UNAVAILABLE = ('reft is not available: pyreft (0.1.0, its only release) pins transformers==4.45.1, '
                    'tokenizers 0.20 and huggingface_hub < 1, which would replace the transformers 5 this version '
                    'of lmforge runs on. Use --tuner_type lora (or adapter) instead.')
TRUNCATION = ('delete', 'left', 'right')
LOSS_SCALES = ('default', 'last_round', 'all', 'ignore_empty_think')
# mixing several --dataset values (lmforge.data.mixing): ms-swift's stopping strategies, LLaMA-Factory's mix strategies
STOPPING_STRATEGIES = ('first_exhausted', 'all_exhausted', 'all_exhausted_without_replacement')
MIX_STRATEGIES = {'concat': None, 'interleave_under': 'first_exhausted', 'interleave_over': 'all_exhausted',
                  'interleave_once': 'all_exhausted_without_replacement'}
GENERATE_METRICS = ('exact_match', 'bleu', 'rouge_l')  # what --predict_with_generate logs (lmforge.eval.custom)
SCHEDULERS = ('linear', 'cosine', 'cosine_with_restarts', 'polynomial', 'constant', 'constant_with_warmup',
              'inverse_sqrt', 'reduce_lr_on_plateau', 'cosine_with_min_lr', 'warmup_stable_decay')


@dataclass
class DataArgs:
    dataset: list[str] = arg(help='training data: files (jsonl/json/csv/parquet/arrow/txt), dirs, save_to_disk '
                                  'folders, registry names (`lmforge data list`) or hub ids; `NAME:subset#N` picks a '
                                  'subset and samples N rows', factory=list)
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
    streaming: bool = arg(False, 'read, shuffle and encode the data while training instead of up front (corpora '
                                 'that do not fit in memory); needs --max_steps')
    shuffle_buffer_size: int = arg(1000, 'samples in the shuffle buffer of --streaming')
    dataset_shuffle: bool = arg(True, 'shuffle the rows of --streaming data (in the buffer)')
    custom_dataset_info: list[str] = arg(help='JSON/YAML files registering more named datasets (ms-swift or '
                                              'LLaMA-Factory format)', factory=list)
    strict: bool = arg(False, 'stop at the first invalid row instead of skipping invalid rows')
    load_from_cache_file: bool = arg(True, 'reuse encoded datasets cached on disk ($LMFORGE_DATA_CACHE, default '
                                           '~/.cache/lmforge/datasets); false re-encodes')
    interleave_prob: list[float] = arg(help='interleave the samples of several --dataset values instead of '
                                            'concatenating them, drawing each next sample from dataset i with '
                                            'probability P_i (one per --dataset, normalised; seeded) - ms-swift\'s '
                                            'flag, LLaMA-Factory\'s interleave_probs', factory=list)
    stopping_strategy: Optional[str] = arg(None, 'interleaving several --dataset values: stop when one is exhausted '
                                                 '(first_exhausted: undersampling, the default with '
                                                 '--interleave_prob), when every one has been given in full, '
                                                 'restarting the exhausted ones (all_exhausted: oversampling), or '
                                                 'give every sample once (all_exhausted_without_replacement). Alone '
                                                 '(no --interleave_prob) the datasets take turns',
                                           choices=STOPPING_STRATEGIES)
    mix_strategy: Optional[str] = arg(None, 'LLaMA-Factory\'s name for the same choice: concat (the default), '
                                            'interleave_under (= --stopping_strategy first_exhausted), '
                                            'interleave_over (= all_exhausted), interleave_once (= '
                                            'all_exhausted_without_replacement)', choices=tuple(MIX_STRATEGIES))

    def validate_data(self):
        if self.shuffle_buffer_size <= 0:
            raise ArgumentError('shuffle_buffer_size', f'must be positive, got {self.shuffle_buffer_size}')
        self.validate_mixing()
        self.validate_columns()
        if self.streaming:
            if getattr(self, 'max_steps', 1) <= 0:
                raise ArgumentError('max_steps', 'is required with --streaming: a stream has no length, so the run '
                                                 'cannot count epochs; set --max_steps N')
            if self.split_dataset_ratio > 0:
                raise ArgumentError('split_dataset_ratio', 'cannot hold rows out of a stream; pass --val_dataset '
                                                           'with --streaming')

    def validate_columns(self):
        check_columns(self.columns or {})

    def validate_mixing(self):
        probs = self.interleave_prob
        if probs:
            if len(probs) != len(self.dataset):
                raise ArgumentError('interleave_prob', f'gives {len(probs)} probabilities for {len(self.dataset)} '
                                                       '--dataset values: give one per dataset, in the same order')
            bad = [p for p in probs if not p > 0]
            if bad:
                raise ArgumentError('interleave_prob', f'must be positive, got {bad[0]} (drop a dataset instead of '
                                                       'giving it 0)')
        if self.mix_strategy == 'concat' and (probs or self.stopping_strategy):
            flag = 'interleave_prob' if probs else 'stopping_strategy'
            raise ArgumentError(flag, 'interleaves the datasets, but --mix_strategy concat concatenates them: drop '
                                      'one of the two')
        implied = MIX_STRATEGIES.get(self.mix_strategy)
        if implied and self.stopping_strategy and self.stopping_strategy != implied:
            raise ArgumentError('stopping_strategy', f'{self.stopping_strategy} contradicts --mix_strategy '
                                                     f'{self.mix_strategy} (which stops at {implied}): give one '
                                                     'of the two')


@dataclass
class TunerArgs:
    tuner_type: str = arg('lora', 'how the model is trained: adapters (lora, adalora, vera, boft, fourierft, miss, '
                                  'bone = miss, adapter, longlora, llamapro) or all parameters (full)',
                          choices=TUNER_TYPES)
    lora_rank: int = arg(8, 'LoRA rank r (also the rank of miss/bone)')
    lora_alpha: int = arg(32, 'LoRA scaling alpha')
    lora_dropout: float = arg(0.05, 'dropout on the LoRA input')
    target_modules: list[str] = arg(help='modules that get adapters: all-linear, or names/regex',
                                    factory=lambda: ['all-linear'])
    modules_to_save: list[str] = arg(help='extra modules trained fully and saved with the adapter', factory=list)
    adapters: list[str] = arg(help='LoRA checkpoint(s) to continue training from', factory=list)
    # ---- LoRA variants
    use_dora: bool = arg(False, 'DoRA: weight-decomposed LoRA (magnitude + direction)')
    use_rslora: bool = arg(False, 'rank-stabilised LoRA scaling alpha/sqrt(r) instead of alpha/r')
    lorap_lr_ratio: Optional[float] = arg(None, 'LoRA+: the learning rate of the B matrices is this times that of A '
                                                '(e.g. 16)')
    init_weights: str = arg('true', 'adapter initialisation: true (B = 0), false (random: the model changes at '
                                    'step 0), gaussian, pissa / olora (from an SVD / QR of the weights), loftq',
                            choices=INIT_WEIGHTS)
    # ---- other PEFT methods
    adalora_target_r: int = arg(8, 'AdaLoRA: average rank kept at the end of the budget schedule')
    adalora_init_r: int = arg(12, 'AdaLoRA: initial rank of every matrix')
    adalora_tinit: int = arg(0, 'AdaLoRA: steps of warm-up before ranks are pruned')
    adalora_tfinal: int = arg(0, 'AdaLoRA: final steps trained at the target budget')
    adalora_deltaT: int = arg(1, 'AdaLoRA: steps between two budget allocations')
    adalora_orth_reg_weight: float = arg(0.5, 'AdaLoRA: weight of the penalty keeping the singular vectors '
                                              'orthogonal (added to the loss)')
    vera_rank: int = arg(256, 'VeRA: rank of the shared random projections')
    vera_projection_prng_key: int = arg(0, 'VeRA: seed of the shared random projections')
    vera_dropout: float = arg(0.0, 'VeRA: dropout on the input')
    vera_d_initial: float = arg(0.1, 'VeRA: initial value of the d vector')
    boft_block_size: int = arg(4, 'BOFT: size of the orthogonal blocks (must divide the layer widths)')
    boft_block_num: int = arg(0, 'BOFT: number of blocks (set this or --boft_block_size)')
    boft_n_butterfly_factor: int = arg(1, 'BOFT: butterfly factors (1 = plain block-diagonal OFT)')
    boft_dropout: float = arg(0.0, 'BOFT: multiplicative dropout')
    fourier_n_frequency: int = arg(2000, 'FourierFT: learnable spectral coefficients per layer')
    fourier_scaling: float = arg(300.0, 'FourierFT: scaling of the spectral update')
    adapter_length: int = arg(128, 'adapter: bottleneck width of the adapters inserted after each MLP')
    adapter_act: str = arg('gelu', 'adapter: activation inside the bottleneck', choices=('gelu', 'relu', 'silu'))
    llamapro_num_new_blocks: int = arg(4, 'llamapro: decoder blocks added (copies with zeroed output projections; '
                                          'only they train)')
    llamapro_num_groups: Optional[int] = arg(None, 'llamapro: groups the original blocks are split into, one new '
                                                   'block after each; default --llamapro_num_new_blocks')
    longlora_group_ratio: float = arg(0.25, 'longlora: shifted sparse attention group size as a fraction of the '
                                            'sequence length')
    # ---- freezing (full fine-tuning)
    freeze_parameters: list[str] = arg(help='full: parameters not trained, as regexes matched at the start of the '
                                            'name (a plain prefix like model.embed_tokens works)', factory=list)
    trainable_parameters: list[str] = arg(help='full: parameters trained even if --freeze_parameters froze them '
                                               '(regexes matched at the start of the name)', factory=list)
    freeze_vit: bool = arg(True, 'multimodal models: freeze the vision tower (reserved: no effect on text models)')
    freeze_aligner: bool = arg(True, 'multimodal models: freeze the aligner/projector (reserved: no effect on text '
                                     'models)')
    # ---- quantized base (QLoRA): CUDA only
    quant_method: Optional[str] = arg(None, 'load the base model quantized (CUDA only): bnb (bitsandbytes), hqq, '
                                            'eetq; train adapters on it', choices=QUANT_METHODS)
    quant_bits: Optional[int] = arg(None, 'bits of the quantized base: 4 or 8 (eetq: 8)', choices=(4, 8))
    bnb_4bit_quant_type: str = arg('nf4', 'bnb 4-bit data type', choices=('nf4', 'fp4'))
    bnb_4bit_use_double_quant: bool = arg(True, 'bnb 4-bit: quantize the quantization constants too')
    # ---- optimisation methods
    use_galore: bool = arg(False, 'GaLore: full training with low-rank projected optimizer states '
                                  '(needs the galore-torch package)')
    galore_target_modules: list[str] = arg(help='GaLore: modules whose weights get projected optimizer states '
                                                '(regexes or names)', factory=lambda: ['attn', 'mlp'])
    galore_rank: int = arg(128, 'GaLore: rank of the projection')
    galore_update_proj_gap: int = arg(50, 'GaLore: steps between projection updates')
    galore_scale: float = arg(1.0, 'GaLore: scale of the projected update')
    galore_proj_type: str = arg('std', 'GaLore: projection type', choices=('std', 'reverse_std', 'right', 'left',
                                                                           'full'))
    galore_optim_per_parameter: bool = arg(False, 'GaLore: one optimizer per parameter (layer-wise; saves the '
                                                  'gradient memory; needs --gradient_accumulation_steps 1)')
    lisa_activated_layers: int = arg(0, 'LISA: decoder layers trained at a time (0 = off; full only); the others '
                                        'stay frozen until the next resampling')
    lisa_step_interval: int = arg(20, 'LISA: steps between two samplings of the trained layers')
    neftune_noise_alpha: Optional[float] = arg(None, 'NEFTune: uniform noise of this scale on the input embeddings '
                                                     'while training (e.g. 5)')
    use_liger_kernel: bool = arg(False, 'Liger kernels (fused RMSNorm, RoPE, SwiGLU, cross-entropy; CUDA only, '
                                        'needs the liger-kernel package)')

    def validate_tuner(self):
        """Conflicts between tuner flags; which packages and devices they need is checked when training starts
        (lmforge.tuners.features.preflight)."""
        t = self.tuner_type
        if t == 'reft':
            raise ArgumentError('tuner_type', REFT_UNAVAILABLE)
        lora_like = ('lora', 'longlora')
        if self.use_dora and t not in lora_like:
            raise ArgumentError('use_dora', f'is a LoRA variant: use it with --tuner_type lora, not {t}')
        if self.use_rslora and t not in lora_like + ('adalora',):
            raise ArgumentError('use_rslora', f'is a LoRA variant: use it with --tuner_type lora, not {t}')
        if self.lorap_lr_ratio is not None:
            if t not in lora_like:
                raise ArgumentError('lorap_lr_ratio', f'(LoRA+) needs --tuner_type lora, not {t}')
            if self.lorap_lr_ratio <= 0:
                raise ArgumentError('lorap_lr_ratio', f'must be positive, got {self.lorap_lr_ratio}')
        if self.init_weights not in ('true', 'false') and t not in lora_like:
            raise ArgumentError('init_weights', f'{self.init_weights} initialises LoRA: use it with --tuner_type '
                                                f'lora (other tuners take true|false)')
        if self.init_weights == 'loftq' and self.quant_method:
            raise ArgumentError('init_weights', 'loftq quantizes the weights itself: drop --quant_method')
        if (self.freeze_parameters or self.trainable_parameters) and t != 'full':
            flag = 'freeze_parameters' if self.freeze_parameters else 'trainable_parameters'
            raise ArgumentError(flag, f'selects what full fine-tuning trains; with --tuner_type {t} only the '
                                      'adapters train (train extra modules with --modules_to_save)')
        for flag in ('freeze_parameters', 'trainable_parameters'):
            for pattern in getattr(self, flag):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ArgumentError(flag, f'{pattern!r} is not a valid regex: {e}') from None
        if self.quant_method or self.quant_bits:
            if not self.quant_method:
                raise ArgumentError('quant_bits', 'needs --quant_method bnb|hqq|eetq')
            if not self.quant_bits:
                raise ArgumentError('quant_method', 'needs --quant_bits 4|8')
            if self.quant_method == 'eetq' and self.quant_bits != 8:
                raise ArgumentError('quant_bits', f'eetq quantizes to 8 bits only, got {self.quant_bits}')
            if t not in QUANTIZABLE_TUNERS:
                raise ArgumentError('quant_method', f'a quantized base trains adapters only: use --tuner_type '
                                                    f'{" | ".join(QUANTIZABLE_TUNERS)}, not {t}')
        if self.use_galore:
            if t != 'full':
                raise ArgumentError('use_galore', f'GaLore trains all weights: use --tuner_type full, not {t}')
            if self.galore_rank <= 0 or self.galore_update_proj_gap <= 0:
                raise ArgumentError('galore_rank', 'and --galore_update_proj_gap must be positive')
        if self.lisa_activated_layers < 0 or self.lisa_step_interval <= 0:
            raise ArgumentError('lisa_activated_layers', 'must be >= 0, and --lisa_step_interval positive')
        if self.lisa_activated_layers and t != 'full':
            raise ArgumentError('lisa_activated_layers', f'LISA samples layers of full fine-tuning: use '
                                                         f'--tuner_type full, not {t}')
        if self.lisa_activated_layers and self.use_galore:
            raise ArgumentError('lisa_activated_layers', 'and --use_galore are two different optimisers: pick one')
        if self.neftune_noise_alpha is not None and self.neftune_noise_alpha <= 0:
            raise ArgumentError('neftune_noise_alpha', f'must be positive, got {self.neftune_noise_alpha}')
        positive = {'adalora_target_r': self.adalora_target_r, 'adalora_init_r': self.adalora_init_r,
                    'adalora_deltaT': self.adalora_deltaT, 'vera_rank': self.vera_rank,
                    'fourier_n_frequency': self.fourier_n_frequency, 'adapter_length': self.adapter_length,
                    'llamapro_num_new_blocks': self.llamapro_num_new_blocks}
        for name, value in positive.items():
            if value <= 0:
                raise ArgumentError(name, f'must be positive, got {value}')
        if self.adalora_orth_reg_weight < 0:
            raise ArgumentError('adalora_orth_reg_weight', f'must be >= 0, got {self.adalora_orth_reg_weight}')
        if self.llamapro_num_groups is not None and self.llamapro_num_groups <= 0:
            raise ArgumentError('llamapro_num_groups', f'must be positive, got {self.llamapro_num_groups}')
        if not 0 < self.longlora_group_ratio <= 1:
            raise ArgumentError('longlora_group_ratio', f'must be in (0, 1], got {self.longlora_group_ratio}')


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
    metric_for_best_model: Optional[str] = arg(None, 'evaluation metric that picks the best checkpoint (recorded in '
                                                     'trainer_state.json, never removed by --save_total_limit): '
                                                     'loss, or with --predict_with_generate exact_match | bleu | '
                                                     'rouge_l')
    greater_is_better: Optional[bool] = arg(None, 'whether a larger --metric_for_best_model is better; default: '
                                                  'false for loss, true otherwise')
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
        for name in ('warmup_steps', 'dataloader_num_workers', 'weight_decay', 'max_grad_norm'):
            if getattr(self, name) < 0:
                raise ArgumentError(name, f'must be >= 0, got {getattr(self, name)}')
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
        import importlib.util
        for backend, modules in (('tensorboard', ('tensorboard', 'tensorboardX')), ('wandb', ('wandb',)),
                                 ('swanlab', ('swanlab',))):
            if backend in self.report_to and not any(importlib.util.find_spec(m) for m in modules):
                raise ArgumentError('report_to', f'{backend} needs the {modules[0]} package: pip install '
                                                 f'"lmforge[{backend}]" (or drop it: --report_to none)')
        if self.optim not in ('adamw_torch', 'adamw_torch_fused'):
            check_optim(self.optim)
        check_output_path(self.output_dir, 'output_dir')


@dataclass
class SftArgs(DistributedArgs, TrainArgs, TunerArgs, DataArgs, TemplateArgs, ModelArgs):
    """Supervised fine-tuning on chat data: the loss is taken on the assistant's tokens only.

    Example: lmforge sft --model Qwen/Qwen2.5-7B-Instruct --dataset data.jsonl --tuner_type lora
    """
    command = 'sft'
    loss_scale: str = arg('default', 'which assistant turns train: default/all = every assistant turn, last_round = '
                                     'the last one, ignore_empty_think = skip empty <think></think> blocks',
                          choices=LOSS_SCALES)
    # ---- generation metrics during training (ms-swift's --predict_with_generate)
    predict_with_generate: bool = arg(False, 'at each evaluation, also answer the validation samples (greedy, prompted '
                                             'as `lmforge infer` prompts) and log exact match, BLEU and ROUGE-L as '
                                             'eval_exact_match, eval_bleu, eval_rouge_l; the answers of the latest '
                                             'evaluation go to OUTPUT_DIR/predictions.jsonl')
    max_new_tokens: int = arg(512, '--predict_with_generate: most tokens generated per answer')
    eval_generate_limit: Optional[int] = arg(None, '--predict_with_generate: answer only the first N validation '
                                                   'samples at each evaluation; default all of them')

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
        self.validate_data()
        if not 0 <= self.split_dataset_ratio < 1:
            raise ArgumentError('split_dataset_ratio', f'must be in [0, 1), got {self.split_dataset_ratio}')
        if self.dataset_num_proc <= 0:
            raise ArgumentError('dataset_num_proc', f'must be positive, got {self.dataset_num_proc}')
        if self.adapters and self.tuner_type != 'lora':
            raise ArgumentError('adapters', 'continues LoRA training: use it with --tuner_type lora')
        if len(self.adapters) > 1:
            raise ArgumentError('adapters', f'continues training one LoRA adapter; got {len(self.adapters)} (merge the '
                                            'others into the base first: lmforge export --merge_lora true)')
        for adapter in self.adapters:
            check_adapter_dir(adapter)
        self.validate_tuner()
        self.validate_train()
        self.validate_distributed()
        self.validate_generate()

    def validate_generate(self):
        """--predict_with_generate and --metric_for_best_model need validation data to evaluate on."""
        has_val = bool(self.val_dataset) or self.split_dataset_ratio > 0
        if self.predict_with_generate:
            if self.command != 'sft':
                raise ArgumentError('predict_with_generate', f'answers chat validation rows: it is for lmforge sft, '
                                                             f'not lmforge {self.command}')
            if not has_val:
                raise ArgumentError('predict_with_generate', 'needs validation data to answer: pass --val_dataset '
                                                             'FILE or --split_dataset_ratio (e.g. 0.05)')
            sharded = self.fsdp or self.deepspeed in ('zero3', 'zero3_offload') or _zero3_file(self.deepspeed)
            if sharded:
                flag = 'fsdp' if self.fsdp else 'deepspeed'
                raise ArgumentError(flag, 'shards the weights across processes, which --predict_with_generate does '
                                          'not generate with; evaluate the checkpoints with `lmforge eval` instead')
        if self.max_new_tokens <= 0:
            raise ArgumentError('max_new_tokens', f'must be positive, got {self.max_new_tokens}')
        if self.eval_generate_limit is not None and self.eval_generate_limit <= 0:
            raise ArgumentError('eval_generate_limit', f'must be positive, got {self.eval_generate_limit}')
        if self.metric_for_best_model and self.command in ('sft', 'pt'):
            metric = self.metric_for_best_model.removeprefix('eval_')
            if not has_val:
                raise ArgumentError('metric_for_best_model', 'needs validation data: pass --val_dataset FILE or '
                                                             '--split_dataset_ratio')
            allowed = ('loss',) + (GENERATE_METRICS if self.predict_with_generate else ())
            if metric not in allowed:
                extra = '' if self.predict_with_generate else \
                    f' ({", ".join(GENERATE_METRICS)} need --predict_with_generate true)'
                raise ArgumentError('metric_for_best_model', f'{self.metric_for_best_model!r} is not an evaluation '
                                                             f'metric of this run; choose {" | ".join(allowed)}{extra}')

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-5 if self.tuner_type == 'full' else 1e-4


def check_columns(columns: dict) -> None:
    """--columns maps column names to column names (non-empty strings)."""
    bad = next(((k, v) for k, v in columns.items() if not isinstance(v, str) or not v or not k), None)
    if bad:
        raise ArgumentError('columns', f'maps column names to column names, JSON \'{{"src": "dst"}}\'; got '
                                       f'{bad[0]!r}: {bad[1]!r}')


def check_optim(name: str) -> None:
    """--optim must be one of transformers' optimizer names (imported only for names other than the defaults)."""
    import difflib

    from transformers.training_args import OptimizerNames

    names = [o.value for o in OptimizerNames]
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        extra = f' Did you mean {hint[0]!r}?' if hint else ''
        raise ArgumentError('optim', f'unknown optimizer {name!r}; choose one of {", ".join(names)}.{extra}')


def _zero3_file(path: str | None) -> bool:
    """Whether a DeepSpeed JSON config shards the weights (ZeRO stage 3)."""
    import json
    import os

    if not path or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding='utf-8') as f:
            return int((json.load(f).get('zero_optimization') or {}).get('stage', 0)) == 3
    except (OSError, ValueError, TypeError, AttributeError):
        return False  # validate_distributed / DeepSpeed report an unreadable config


@dataclass
class PtArgs(SftArgs):
    """Pre-training / continued pre-training on plain text: the loss is taken on every token.

    Example: lmforge pt --model Qwen/Qwen2.5-0.5B --dataset corpus.jsonl --tuner_type full --packing true
    """
    command = 'pt'
    tuner_type: str = arg('full', 'how the model is trained: all parameters or LoRA adapters', choices=TUNER_TYPES)
