"""Training-time features of the tuners: what each adds to TrainingArguments, the Trainer's callbacks and its
optimizer. The workflow asks once (:func:`training_setup`) and passes the result on; nothing here is per-tuner code
in the workflow.

- NEFTune (--neftune_noise_alpha): TrainingArguments.neftune_noise_alpha (the Trainer hooks the input embeddings).
- GaLore (--use_galore): transformers' galore_* optimizers on --galore_target_modules (needs galore-torch).
- LISA (--lisa_activated_layers): a callback that, every --lisa_step_interval steps, samples which decoder layers
  train; embeddings, the final norm and the LM head always train (LMFlow's recipe). The optimizer holds every
  parameter; frozen layers simply get no gradient (AdamW skips them).
- LoRA+ (--lorap_lr_ratio): peft's create_loraplus_optimizer (B matrices at ratio x the learning rate).
- AdaLoRA: a callback that sets the budget schedule's length when training starts and reallocates ranks after
  every optimizer step (peft's update_and_allocate), and the orthogonality penalty (`AdaLoraPenalty`), which peft
  adds only to a loss the model computes itself: lmforge's trainer computes the loss, so it adds the penalty.
- Liger kernels (--use_liger_kernel): TrainingArguments.use_liger_kernel with RMSNorm/RoPE/SwiGLU kernels (CUDA only,
  needs liger-kernel); Liger's fused cross-entropy stays off (lmforge's own loss, see training_setup).
"""
from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass, field

from transformers import TrainerCallback

from lmforge.errors import ArgumentError


def preflight(args, device: str) -> None:
    """Missing packages and devices, found before any data or weights load."""
    from lmforge.tuners.quant import check_quantization

    check_quantization(args, device)
    if getattr(args, 'init_weights', None) == 'loftq':  # peft's LoftQ quantizes with bitsandbytes on the GPU
        if device != 'cuda':
            raise ArgumentError('init_weights', f'loftq initialisation needs a CUDA GPU (peft quantizes the weights '
                                                f'there); this machine has {device}. Use pissa or olora instead.')
        if importlib.util.find_spec('bitsandbytes') is None:
            raise ArgumentError('init_weights', 'loftq quantizes the weights with bitsandbytes: '
                                                'pip install bitsandbytes')
    if getattr(args, 'use_galore', False) and importlib.util.find_spec('galore_torch') is None:
        raise ArgumentError('use_galore', 'GaLore needs the galore-torch package: pip install galore-torch')
    if getattr(args, 'use_liger_kernel', False):
        if importlib.util.find_spec('liger_kernel') is None:
            raise ArgumentError('use_liger_kernel', 'needs the liger-kernel package: pip install liger-kernel')
        if device != 'cuda':
            raise ArgumentError('use_liger_kernel', f'Liger kernels are Triton kernels for CUDA GPUs; this machine '
                                                    f'has {device}. Drop --use_liger_kernel.')


@dataclass
class TrainingSetup:
    training_args: dict = field(default_factory=dict)  # extra TrainingArguments keyword arguments
    callbacks: list = field(default_factory=list)
    lorap_lr_ratio: float | None = None

    def optimizer(self, model, training_args):
        """A custom optimizer for the Trainer, or None to let it build its own."""
        if self.lorap_lr_ratio is None:
            return None
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
        kwargs = {k: v for k, v in kwargs.items() if k != 'lr'}
        return create_loraplus_optimizer(model, cls, lr=training_args.learning_rate,
                                         loraplus_lr_ratio=self.lorap_lr_ratio,
                                         weight_decay=training_args.weight_decay, **kwargs)


def training_setup(args, model) -> TrainingSetup:
    setup = TrainingSetup()
    extra = setup.training_args
    if getattr(args, 'neftune_noise_alpha', None):
        extra['neftune_noise_alpha'] = args.neftune_noise_alpha
    if getattr(args, 'use_galore', False):
        extra.update(galore_training_args(args))
    if getattr(args, 'use_liger_kernel', False):
        extra['use_liger_kernel'] = True
        # RMSNorm, RoPE and SwiGLU kernels; not Liger's fused linear cross-entropy: it replaces the model's forward
        # with one that cannot take lmforge's boolean logits_to_keep mask (and lmforge computes the loss itself,
        # with the LM head on trained positions only)
        extra['liger_kernel_config'] = {'fused_linear_cross_entropy': False, 'cross_entropy': False}
    if getattr(args, 'lisa_activated_layers', 0):
        setup.callbacks.append(LisaCallback(model, args.lisa_activated_layers, args.lisa_step_interval, args.seed))
    if args.tuner_type == 'adalora':
        setup.callbacks.append(AdaLoraCallback())
    if getattr(args, 'lorap_lr_ratio', None) is not None:
        setup.lorap_lr_ratio = args.lorap_lr_ratio
    return setup


def galore_training_args(args) -> dict:
    if args.galore_optim_per_parameter and args.gradient_accumulation_steps != 1:
        raise ArgumentError('galore_optim_per_parameter', 'steps each parameter inside backward: it needs '
                                                          '--gradient_accumulation_steps 1')
    optim = args.optim if args.optim.startswith('galore_') else 'galore_adamw'
    if args.galore_optim_per_parameter and not optim.endswith('_layerwise'):
        optim += '_layerwise'
    return {'optim': optim, 'optim_target_modules': list(args.galore_target_modules),
            'optim_args': f'rank={args.galore_rank},update_proj_gap={args.galore_update_proj_gap},'
                          f'scale={args.galore_scale},proj_type={args.galore_proj_type}'}


class LisaCallback(TrainerCallback):
    """Layer-wise importance sampling: ``n`` decoder layers train at a time, resampled every ``interval`` steps.
    The choice depends only on (seed, step // interval), so a resumed run samples the same layers."""

    def __init__(self, model, n: int, interval: int, seed: int = 42):
        from lmforge.tuners.llamapro import decoder_layers

        self.layers = decoder_layers(model)[1]
        if n > len(self.layers):
            raise ArgumentError('lisa_activated_layers', f'{n} is more than the model\'s {len(self.layers)} layers')
        self.n, self.interval, self.seed = n, interval, seed
        self.active: list[int] = []

    def _sample(self, step: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + step // self.interval)
        self.active = sorted(rng.sample(range(len(self.layers)), self.n))
        for i, layer in enumerate(self.layers):
            for p in layer.parameters():
                p.requires_grad_(i in self.active)

    def on_train_begin(self, args, state, control, **kwargs):
        self._sample(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.interval == 0:
            self._sample(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        for p in self.layers.parameters():
            p.requires_grad_(True)


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA's rank budget: its schedule runs over the real number of steps, and ranks are reallocated after each
    optimizer step from the gradients (which are still there at on_optimizer_step)."""

    @staticmethod
    def _tuner(model):
        tuner = getattr(model, 'base_model', None)
        if tuner is None or not hasattr(tuner, 'update_and_allocate'):
            raise ArgumentError('tuner_type', 'adalora: the model is not an AdaLoRA peft model')
        return tuner

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tuner = self._tuner(model)
        config = tuner.peft_config[tuner.trainable_adapter_name]
        if config.tinit >= state.max_steps - config.tfinal:
            raise ArgumentError('adalora_tinit', f'+ --adalora_tfinal ({config.tinit} + {config.tfinal}) must be '
                                                 f'less than the {state.max_steps} training steps')
        tuner.rankallocator.set_total_step(state.max_steps)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._tuner(model).update_and_allocate(state.global_step)


class AdaLoraPenalty:
    """AdaLoRA's orthogonality regulariser, as peft's AdaLoraModel.forward adds it to a model-computed loss:
    weight * mean over the adapter's A and B matrices of ||A A^T - I||_F (and ||B^T B - I||_F)."""

    def __init__(self, tuner):
        self.name = tuner.trainable_adapter_name
        self.weight = tuner.peft_config[self.name].orth_reg_weight
        self.matrices = [(p, 'lora_A' in n) for n, p in tuner.model.named_parameters()
                         if ('lora_A' in n or 'lora_B' in n) and self.name in n]

    @classmethod
    def of(cls, model) -> 'AdaLoraPenalty | None':
        """The penalty of an AdaLoRA peft model with a positive weight, else None."""
        from peft.tuners.adalora import AdaLoraModel

        tuner = getattr(model, 'base_model', None)
        if not isinstance(tuner, AdaLoraModel):
            return None
        penalty = cls(tuner)
        return penalty if penalty.weight > 0 and penalty.matrices else None

    def __call__(self):
        import torch

        total = 0
        for p, is_a in self.matrices:
            cov = p @ p.T if is_a else p.T @ p  # A: r x in, B: out x r -> r x r
            total = total + torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device,
                                                                      dtype=cov.dtype))
        return self.weight * total / len(self.matrices)
