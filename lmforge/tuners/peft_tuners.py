"""Tuners built on peft: one small function per method, each (model, args) -> model.

Every one of them starts from ``args.target_modules`` (``all-linear`` = every linear layer of the decoder, the LM head
excluded) and leaves the base weights frozen; only the method's own parameters (and ``--modules_to_save``) train.
"""
from __future__ import annotations

from lmforge.errors import ArgumentError


def log(msg: str) -> None:
    print(f'[lmforge] {msg}', flush=True)


def _targets(args):
    targets = args.target_modules
    return 'all-linear' if targets == ['all-linear'] else targets


def _wrap(model, config, flag: str = 'target_modules'):
    from peft import get_peft_model

    names = [n for n, _ in model.named_modules()]
    for wanted in getattr(config, 'modules_to_save', None) or []:  # peft skips a name that matches nothing
        if not any(n == wanted or n.endswith('.' + wanted) for n in names):
            leaves = sorted({n.rsplit('.', 1)[-1] for n in names if n and not n.rsplit('.', 1)[-1].isdigit()})
            raise ArgumentError('modules_to_save', f'{wanted!r} names no module of the model; its module names '
                                                   f'end in: {", ".join(leaves)}')
    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ArgumentError(flag, f'{type(config).__name__}: {e}') from None


def _init_weights(args) -> bool:
    return args.init_weights != 'false'


def lora_config(args, **extra):
    """LoRA and its variants: DoRA (--use_dora), rsLoRA (--use_rslora) and the initialisations of --init_weights.
    pissa/olora rewrite the base weights as W - B0 A0; reloading the adapter on the original base redoes that
    (it is deterministic: full SVD / QR), so checkpoints stay ordinary LoRA checkpoints."""
    from peft import LoraConfig

    init = {'true': True, 'false': False}.get(args.init_weights, args.init_weights)
    kwargs = {}
    if init == 'loftq':
        from peft import LoftQConfig
        kwargs['loftq_config'] = LoftQConfig(loftq_bits=4, loftq_iter=1)
    return LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=_targets(args), modules_to_save=args.modules_to_save or None,
                      use_dora=args.use_dora, use_rslora=args.use_rslora, init_lora_weights=init,
                      task_type='CAUSAL_LM', **kwargs, **extra)


def lora(model, args):
    """LoRA adapters on --target_modules (+ DoRA / rsLoRA / PiSSA / OLoRA / LoftQ / gaussian init)."""
    from peft import PeftModel

    if args.adapters:  # continue training existing adapters
        return PeftModel.from_pretrained(model, args.adapters[0], is_trainable=True)
    if args.init_weights in ('pissa', 'olora', 'loftq'):
        log(f'--init_weights {args.init_weights}: initialising the adapters from the weights (SVD/QR; slow on '
            'large models)')
    return _wrap(model, lora_config(args))


def adalora(model, args):
    """AdaLoRA: SVD-shaped adapters whose ranks are pruned to --adalora_target_r on average over training. The
    budget schedule needs the number of steps: it is set when training starts (AdaLoraCallback)."""
    from peft import AdaLoraConfig

    total = args.max_steps if getattr(args, 'max_steps', -1) > 0 else 1_000_000  # replaced at train begin
    config = AdaLoraConfig(r=args.adalora_init_r, init_r=args.adalora_init_r, target_r=args.adalora_target_r,
                           tinit=args.adalora_tinit, tfinal=args.adalora_tfinal, deltaT=args.adalora_deltaT,
                           orth_reg_weight=args.adalora_orth_reg_weight,
                           lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, use_rslora=args.use_rslora,
                           target_modules=_targets(args), modules_to_save=args.modules_to_save or None,
                           total_step=max(total, args.adalora_tinit + args.adalora_tfinal + 1), task_type='CAUSAL_LM')
    return _wrap(model, config)


def vera(model, args):
    """VeRA: frozen random projections shared by all layers, a trainable scaling vector pair per layer."""
    from peft import VeraConfig

    config = VeraConfig(r=args.vera_rank, projection_prng_key=args.vera_projection_prng_key,
                        vera_dropout=args.vera_dropout, d_initial=args.vera_d_initial, save_projection=True,
                        target_modules=_targets(args), modules_to_save=args.modules_to_save or None,
                        init_weights=_init_weights(args), task_type='CAUSAL_LM')
    return _wrap(model, config)


def boft(model, args):
    """BOFT: butterfly-factorised orthogonal fine-tuning (multiplies each weight by a learned orthogonal matrix)."""
    from peft import BOFTConfig

    config = BOFTConfig(boft_block_size=args.boft_block_size if not args.boft_block_num else 0,
                        boft_block_num=args.boft_block_num, boft_n_butterfly_factor=args.boft_n_butterfly_factor,
                        boft_dropout=args.boft_dropout, target_modules=_targets(args),
                        modules_to_save=args.modules_to_save or None, init_weights=_init_weights(args),
                        task_type='CAUSAL_LM')
    return _wrap(model, config, 'boft_block_size')


def fourierft(model, args):
    """FourierFT: learns --fourier_n_frequency spectral coefficients per weight; the update is their inverse DFT."""
    from peft import FourierFTConfig

    config = FourierFTConfig(n_frequency=args.fourier_n_frequency, scaling=args.fourier_scaling,
                             random_loc_seed=args.seed if hasattr(args, 'seed') else 777,
                             target_modules=_targets(args), modules_to_save=args.modules_to_save or None,
                             init_weights=_init_weights(args), task_type='CAUSAL_LM')
    return _wrap(model, config, 'fourier_n_frequency')


def miss(model, args):
    """MiSS (formerly Bone): a shared block matrix of rank --lora_rank added to every block of the weight."""
    from peft import MissConfig

    config = MissConfig(r=args.lora_rank, miss_dropout=args.lora_dropout, target_modules=_targets(args),
                        modules_to_save=args.modules_to_save or None, init_weights=_init_weights(args),
                        task_type='CAUSAL_LM')
    return _wrap(model, config, 'lora_rank')


def bone(model, args):
    """`bone` is MiSS's former name: peft renamed Bone to MiSS and dropped BoneConfig."""
    log('--tuner_type bone: peft renamed Bone to MiSS (BoneConfig is gone); training MiSS')
    return miss(model, args)


def longlora(model, args):
    """LongLoRA: LoRA + trainable embeddings and norms, trained with shifted sparse attention (S2-Attn) over groups
    of --longlora_group_ratio of the sequence. Inference uses ordinary full attention."""
    from lmforge.tuners.longlora import enable_shifted_sparse_attention

    enable_shifted_sparse_attention(model, args.longlora_group_ratio)
    if args.adapters:
        from peft import PeftModel
        return PeftModel.from_pretrained(model, args.adapters[0], is_trainable=True)
    import torch

    norms_and_embeddings = {name.split('.')[-1] for name, module in model.named_modules()
                            if isinstance(module, (torch.nn.Embedding, torch.nn.LayerNorm))
                            or type(module).__name__.endswith('RMSNorm')}
    config = lora_config(args)
    config.modules_to_save = list(dict.fromkeys((args.modules_to_save or []) + sorted(norms_and_embeddings)))
    return _wrap(model, config)
