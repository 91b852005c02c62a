"""Arguments of `lmforge rlhf` (ms-swift's names): everything `lmforge sft` takes, plus the preference and
reinforcement-learning settings of each --rlhf_type."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from lmforge.args.parse import arg
from lmforge.args.train import SftArgs
from lmforge.errors import ArgumentError
from lmforge.hub import check_model_dir, looks_local

RLHF_TYPES = ('dpo', 'orpo', 'simpo', 'cpo', 'kto', 'rm', 'ppo', 'grpo', 'gkd')
PAIRED = ('dpo', 'orpo', 'simpo', 'cpo', 'rm')   # trained on chosen/rejected pairs
ONLINE = ('ppo', 'grpo', 'gkd')                  # generate during training
# --streaming: TRL 1.16's experimental ORPO/CPO trainers map their dataset with num_proc, which a datasets
# IterableDataset does not take; the other trainers read a stream.
NO_STREAMING = ('orpo', 'simpo', 'cpo')
LOSS_TYPES = {
    'dpo': ('sigmoid', 'hinge', 'ipo', 'exo_pair', 'nca_pair', 'robust', 'bco_pair', 'sppo_hard', 'aot',
            'aot_unpaired', 'apo_zero', 'apo_down', 'discopop', 'sft', 'sigmoid_norm'),
    'cpo': ('sigmoid', 'hinge', 'ipo'),
    'kto': ('kto', 'apo_zero_unpaired'),
    'grpo': ('grpo', 'dr_grpo', 'dapo', 'bnpo', 'cispo', 'sapo', 'luspo', 'vespo'),
}
# --beta when not given: the method's usual value (ms-swift's / the papers').
DEFAULT_BETA = {'dpo': 0.1, 'orpo': 0.1, 'cpo': 0.1, 'simpo': 2.0, 'kto': 0.1, 'grpo': 0.04, 'gkd': 0.5}


@dataclass
class RlhfArgs(SftArgs):
    """Preference alignment and RL on TRL's trainers: dpo, orpo, simpo, cpo, kto, rm (reward model), ppo, grpo, gkd.

    Example: lmforge rlhf --rlhf_type dpo --model Qwen/Qwen2.5-7B-Instruct --dataset pairs.jsonl --beta 0.1
    """
    command = 'rlhf'
    rlhf_type: str = arg('dpo', 'the method: dpo/orpo/simpo/cpo (chosen/rejected pairs), kto (desirable/undesirable '
                                'rows), rm (reward model: a scalar head trained on pairs), ppo (reward model), grpo '
                                '(reward functions), gkd (distillation from --teacher_model)', choices=RLHF_TYPES)
    # ------------------------------------------------------------------ offline preference methods
    ref_model: Optional[str] = arg(None, 'reference model (dpo/kto/grpo/ppo): a model dir, hub id or checkpoint; '
                                         'default: the starting policy (LoRA: the base with adapters disabled, no '
                                         'second copy; full: a frozen copy)')
    beta: Optional[float] = arg(None, 'dpo/kto/cpo: the KL temperature; simpo: the reward scale; orpo: the odds-ratio '
                                      'weight (lambda); grpo: the KL weight; gkd: the JSD interpolation. Default per '
                                      'method: dpo/kto/orpo/cpo 0.1, simpo 2.0, grpo 0.04, gkd 0.5')
    loss_type: list[str] = arg(help='loss variant(s). dpo: sigmoid|hinge|ipo|robust|bco_pair|sppo_hard|nca_pair|'
                                    'apo_zero|apo_down|aot|discopop|sigmoid_norm|sft|... (several are summed, weighted '
                                    'by --loss_weights); cpo: sigmoid|hinge|ipo; kto: kto|apo_zero_unpaired; grpo: '
                                    'grpo|dr_grpo|dapo|bnpo|...; default: the first of each list (grpo: grpo)',
                               factory=list)
    loss_weights: list[float] = arg(help='weights of several --loss_type values (dpo)', factory=list)
    label_smoothing: float = arg(0.0, 'dpo/cpo: assumed probability that a pair is labelled the wrong way round')
    rpo_alpha: Optional[float] = arg(None, 'dpo: add rpo_alpha x the NLL of the chosen answer (RPO)')
    simpo_gamma: float = arg(1.0, 'simpo: target reward margin gamma')
    cpo_alpha: Optional[float] = arg(None, 'cpo/simpo: weight of the NLL term on chosen answers; default cpo 1.0, '
                                           'simpo 0.0 (pure SimPO; > 0 gives CPO-SimPO)')
    desirable_weight: float = arg(1.0, 'kto: loss weight of desirable (label true) rows')
    undesirable_weight: float = arg(1.0, 'kto: loss weight of undesirable (label false) rows')
    center_rewards_coefficient: Optional[float] = arg(None, 'rm: pull the mean reward towards 0 with this weight')
    # ------------------------------------------------------------------ online methods
    reward_model: list[str] = arg(help='ppo/grpo: reward model(s), e.g. a `lmforge rlhf --rlhf_type rm` checkpoint',
                                  factory=list)
    reward_funcs: list[str] = arg(help='grpo/ppo: reward functions: built-in accuracy|format|length|cosine|repetition '
                                       '(length = soft overlong punishment), a name from --external_plugins, or '
                                       'module:function', factory=list)
    reward_weights: list[float] = arg(help='weights of the rewards (--reward_funcs first, then --reward_model); '
                                           'default 1 each', factory=list)
    external_plugins: list[str] = arg(help='Python files loaded first; their functions can be named in --reward_funcs '
                                           'and their `register_reward` calls add named rewards', factory=list)
    num_generations: int = arg(8, 'grpo: completions sampled per prompt (the group)')
    max_completion_length: int = arg(512, 'ppo/grpo/gkd: most tokens generated per completion')
    temperature: float = arg(0.9, 'ppo/grpo/gkd: sampling temperature of the rollouts')
    top_p: float = arg(1.0, 'ppo/grpo: nucleus sampling of the rollouts')
    top_k: int = arg(50, 'ppo/grpo: top-k sampling of the rollouts (0 = off)')
    repetition_penalty: float = arg(1.0, 'grpo: repetition penalty of the rollouts')
    epsilon: float = arg(0.2, 'grpo: clipping range of the policy ratio')
    epsilon_high: Optional[float] = arg(None, 'grpo: upper clipping range (DAPO clip-higher); default --epsilon')
    num_iterations: int = arg(1, 'grpo: optimisation passes over each batch of rollouts (mu)')
    scale_rewards: str = arg('group', 'grpo: divide advantages by the reward std of the group, the batch, or not',
                             choices=('group', 'batch', 'none'))
    log_completions: bool = arg(False, 'grpo: print sampled completions with their rewards at each log')
    use_vllm: bool = arg(False, 'grpo: generate with vLLM (GPU only, vllm installed)')
    vllm_mode: str = arg('colocate', 'grpo: vLLM in the training process (colocate) or a `trl vllm-serve` server',
                         choices=('colocate', 'server'))
    vllm_gpu_memory_utilization: float = arg(0.3, 'grpo, colocated vLLM: fraction of GPU memory it may take')
    # built-in reward settings (ms-swift's names)
    format_pattern: str = arg(r'^<think>.*?</think>\s*<answer>.*?</answer>$',
                              'format reward: the regex a completion must match in full (DOTALL) to score 1')
    cosine_min_len_value_wrong: float = arg(-0.5, 'cosine reward: wrong answer, shortest length')
    cosine_max_len_value_wrong: float = arg(0.0, 'cosine reward: wrong answer, longest length')
    cosine_min_len_value_correct: float = arg(1.0, 'cosine reward: right answer, shortest length')
    cosine_max_len_value_correct: float = arg(0.5, 'cosine reward: right answer, longest length')
    cosine_max_len: Optional[int] = arg(None, 'cosine reward: the length the curve ends at; default '
                                              '--max_completion_length')
    repetition_n_grams: int = arg(3, 'repetition reward: n-gram size (words)')
    repetition_max_penalty: float = arg(-1.0, 'repetition reward: the penalty of a fully repetitive completion')
    soft_max_length: Optional[int] = arg(None, 'length reward: the hard limit (default --max_completion_length)')
    soft_cache_length: Optional[int] = arg(None, 'length reward: penalty ramps linearly over the last N tokens before '
                                                 '--soft_max_length; default a quarter of it')
    # ppo
    num_ppo_epochs: int = arg(4, 'ppo: optimisation passes over each batch of rollouts')
    num_mini_batches: int = arg(1, 'ppo: minibatches each pass is split into (one optimizer step each)')
    kl_coef: float = arg(0.05, 'ppo: weight of the per-token KL penalty to the reference in the reward')
    cliprange: float = arg(0.2, 'ppo: clipping range of the policy ratio')
    vf_coef: float = arg(0.1, 'ppo: weight of the value loss')
    cliprange_value: float = arg(0.2, 'ppo: clipping range of the value prediction')
    gamma: float = arg(1.0, 'ppo: discount factor')
    lam: float = arg(0.95, 'ppo: GAE lambda')
    whiten_rewards: bool = arg(False, 'ppo: normalise the scores of each batch of rollouts')
    missing_eos_penalty: Optional[float] = arg(None, 'ppo/grpo: subtract this from the reward of a completion that '
                                                     'ends without the end-of-turn token')
    # gkd
    teacher_model: Optional[str] = arg(None, 'gkd: the teacher, a model dir, hub id or checkpoint (same vocabulary)')
    lmbda: float = arg(0.5, 'gkd: fraction of batches trained on the student\'s own samples (on-policy)')
    seq_kd: bool = arg(False, 'gkd: on the other batches, train on the teacher\'s samples instead of the dataset')

    def validate(self):
        super().validate()
        kind = self.rlhf_type
        if self.packing:
            raise ArgumentError('packing', 'is not supported by rlhf: pairs and rollouts are batched with padding')
        if self.streaming and kind in NO_STREAMING:
            trainer = 'ORPOTrainer' if kind == 'orpo' else 'CPOTrainer'
            raise ArgumentError('streaming', f'is not supported with --rlhf_type {kind}: TRL\'s {trainer} prepares '
                                             'its whole dataset up front. Drop --streaming, or use --rlhf_type dpo, '
                                             'which streams')
        if self.beta is not None and (self.beta < 0 or (self.beta == 0 and kind not in ('grpo', 'gkd'))):
            raise ArgumentError('beta', f'must be positive for {kind}, got {self.beta}')
        if self.loss_type:
            allowed = LOSS_TYPES.get('cpo' if kind == 'simpo' else kind)
            if allowed is None:
                raise ArgumentError('loss_type', f'{kind} has no loss variants; remove --loss_type')
            if kind != 'dpo' and len(self.loss_type) > 1:
                raise ArgumentError('loss_type', f'{kind} takes one loss type, got {self.loss_type}')
            for t in self.loss_type:
                if t not in allowed:
                    raise ArgumentError('loss_type', f'{t!r} is not a {kind} loss; choose one of {", ".join(allowed)}')
        if self.loss_weights and len(self.loss_weights) != len(self.loss_type):
            raise ArgumentError('loss_weights', f'gives {len(self.loss_weights)} weights for '
                                                f'{len(self.loss_type)} --loss_type values')
        if self.rpo_alpha is not None and kind != 'dpo':
            raise ArgumentError('rpo_alpha', f'applies to dpo only, not {kind}')
        if self.ref_model and kind not in ('dpo', 'kto', 'grpo', 'ppo'):
            raise ArgumentError('ref_model', f'{kind} uses no reference model')
        if not 0 <= self.label_smoothing < 0.5:
            raise ArgumentError('label_smoothing', f'must be in [0, 0.5), got {self.label_smoothing}')
        for name in ('desirable_weight', 'undesirable_weight'):
            if getattr(self, name) <= 0:
                raise ArgumentError(name, f'must be positive, got {getattr(self, name)}')
        if kind in ONLINE:
            if self.max_completion_length <= 0:
                raise ArgumentError('max_completion_length', f'must be positive, got {self.max_completion_length}')
            if self.temperature <= 0:
                raise ArgumentError('temperature', 'must be positive: the rollouts are sampled')
        if kind in ('grpo', 'ppo'):
            if not self.reward_funcs and not self.reward_model:
                raise ArgumentError('reward_funcs', f'{kind} needs rewards: --reward_funcs (e.g. accuracy) and/or '
                                                    '--reward_model')
            n_rewards = len(self.reward_funcs) + len(self.reward_model)
            if self.reward_weights and len(self.reward_weights) != n_rewards:
                raise ArgumentError('reward_weights', f'gives {len(self.reward_weights)} weights for {n_rewards} '
                                                      'rewards (--reward_funcs, then --reward_model)')
        elif self.reward_funcs or self.reward_model:
            raise ArgumentError('reward_funcs' if self.reward_funcs else 'reward_model',
                                f'is used by grpo and ppo, not {kind}')
        if kind == 'grpo':
            if self.num_generations < 2:
                raise ArgumentError('num_generations', 'must be at least 2: grpo compares completions of a prompt')
            batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
            if batch % self.num_generations:
                raise ArgumentError('num_generations', f'({self.num_generations}) must divide the completions of an '
                                                       f'optimizer step, --per_device_train_batch_size x '
                                                       f'--gradient_accumulation_steps = {batch}; e.g. '
                                                       f'--per_device_train_batch_size {self.num_generations}')
            if self.num_iterations <= 0:
                raise ArgumentError('num_iterations', f'must be positive, got {self.num_iterations}')
        if kind == 'ppo':
            if self.gradient_accumulation_steps != 1:
                raise ArgumentError('gradient_accumulation_steps', 'ppo makes --num_ppo_epochs x --num_mini_batches '
                                                                   'updates per batch of rollouts; leave it at 1 and '
                                                                   'set the rollout batch with '
                                                                   '--per_device_train_batch_size')
            if self.num_ppo_epochs <= 0 or self.num_mini_batches <= 0:
                raise ArgumentError('num_ppo_epochs', 'and --num_mini_batches must be positive')
            if self.per_device_train_batch_size % self.num_mini_batches:
                raise ArgumentError('num_mini_batches', f'({self.num_mini_batches}) must divide '
                                                        f'--per_device_train_batch_size '
                                                        f'({self.per_device_train_batch_size})')
            if self.resume_from_checkpoint:
                raise ArgumentError('resume_from_checkpoint', 'is not supported by ppo yet (its value head and '
                                                              'rollout state are not restored); start a new run from '
                                                              'the checkpoint with --model')
        if kind == 'gkd':
            if not self.teacher_model:
                raise ArgumentError('teacher_model', 'is required for gkd')
            if not 0 <= self.lmbda <= 1:
                raise ArgumentError('lmbda', f'must be in [0, 1], got {self.lmbda}')
        elif self.teacher_model:
            raise ArgumentError('teacher_model', f'is used by gkd, not {kind}')
        if self.use_vllm and kind != 'grpo':
            raise ArgumentError('use_vllm', f'is supported for grpo, not {kind}')
        self.validate_model_paths()

    def validate_model_paths(self):
        """Local --ref_model / --teacher_model / --reward_model paths are checked now, named by their own flag."""
        for flag in ('ref_model', 'teacher_model', 'reward_model'):
            value = getattr(self, flag)
            for spec in value if isinstance(value, list) else [value]:
                if spec and looks_local(spec):
                    if not os.path.exists(os.path.expanduser(spec)):
                        raise ArgumentError(flag, f'{spec} does not exist')
                    check_model_dir(spec, flag)

    @property
    def beta_value(self) -> float | None:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.rlhf_type)
