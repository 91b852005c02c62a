"""`lmforge estimate`: peak GPU memory of a training run, predicted from the model's config alone.

The model is instantiated on the meta device (no weights, no memory), the tuner is applied to it, and parameters are
counted by kind. Memory per GPU, in bytes (e = bytes of the training dtype, 2 for bf16; world = GPUs in all):

weights      every parameter in the training dtype; adapter parameters in fp32 (peft keeps them fp32 under bf16
             autocast); with --quant_bits the decoder's linear weights at 4.13 (nf4 + double quant) / 8.06 bits
             (embeddings, LM head, norms stay in e). ZeRO-3: /world, plus two decoder layers gathered at a time.
gradients    one per trainable parameter, in its dtype. ZeRO-2/3: /world.
optimizer    AdamW: two states per trainable parameter in the parameter's dtype (the Trainer on a bf16 model keeps
             bf16 states); adamw_8bit: 2 bytes; lion: one state; sgd/adafactor: ~0. Under DeepSpeed (bf16 mixed
             precision) the ZeRO paper's 12 bytes (fp32 master + m + v), /world from ZeRO-1 on; *_offload: on CPU.
             The optimizer step itself needs one more parameter-sized temporary (torch's foreach AdamW: sqrt(v)).
activations  the tensors autograd saves, counted per token and layer for a Llama-style block (RMSNorm, attention,
             gated MLP) as transformers and torch run it (see ``layer_activation_bytes``), times the tokens of one
             micro-batch, plus the LM head/loss (``head_activation_bytes``). Gradient checkpointing keeps only each
             layer's input (e*h per token) and recomputes one layer at a time in backward.

peak = weights + optimizer + max(forward/backward peak, optimizer-step peak), where the forward/backward peak is the
activations at the start of backward plus the largest transient (the loss backward's logits gradients, or one
layer's recomputation and backward), and the optimizer-step peak is gradients + the AdamW temporary.

That is what torch.cuda.max_memory_allocated() reports; the CUDA context (~0.5-1 GiB) and allocator fragmentation
come on top, so a GPU "fits" when peak * 1.05 + 1 GiB is below its size.

The activation model is checked on CPU (tests/tuners/test_estimate.py): the tensors autograd saves during a tiny
bf16 forward, counted with a saved-tensors hook, and the live-memory peak of forward+backward from torch's profiler,
against the estimate's terms, for several configurations (tests/assets/estimate_measurements.json).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field

from lmforge.errors import ArgumentError, ModelError

GIB = 1024 ** 3
GB = 1e9
GPUS = {24.0: 'RTX 4090 / A10 / L4', 40.0: 'A100 40GB', 48.0: 'L40S / A6000', 80.0: 'A100 80GB / H100',
        141.0: 'H200'}
DTYPE_BYTES = {'bfloat16': 2, 'float16': 2, 'float32': 4, 'auto': 2}
ADAPTER_TUNERS = ('lora', 'longlora', 'adalora', 'vera', 'boft', 'fourierft', 'miss', 'bone', 'adapter')


# ----------------------------------------------------------------------------------------------- the model's shape
@dataclass
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # per token: the MLP width a token goes through (MoE: top-k experts + shared expert)
    vocab: int
    gated_mlp: bool = True
    tied: bool = False
    params: int = 0
    linear_params: int = 0  # decoder linear weights (what --quant_bits quantizes)
    layer_params: int = 0  # parameters of one decoder layer
    linears: list = field(default_factory=list)  # (leaf name, in, out) of one decoder layer's linear layers

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def load_config(args):
    """The model's config from a local dir, a config.json, or a hub id (only config.json is fetched)."""
    from transformers import AutoConfig

    from lmforge.hub import check_model_dir, looks_local

    name = args.model
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        path = os.path.dirname(os.path.abspath(path))
    elif os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, 'config.json')) and \
                os.path.isfile(os.path.join(path, 'adapter_config.json')):
            raise ModelError(f'--model: {name} is a LoRA checkpoint; estimate from its base model (the model it was '
                             'trained on) with the same --tuner_type lora flags')
        check_model_dir(path)
    elif looks_local(name):
        raise ModelError(f'--model: {name} does not exist')
    else:
        path = _hub_config_dir(args)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f'could not read the model config of {name}: {e}') from None


def _hub_config_dir(args) -> str:
    from lmforge.hub import use_hf_default

    try:
        if use_hf_default(args.use_hf):
            from huggingface_hub import hf_hub_download
            file = hf_hub_download(args.model, 'config.json', revision=args.model_revision, token=args.hub_token)
        else:
            from modelscope.hub.file_download import model_file_download
            file = model_file_download(args.model, 'config.json', revision=args.model_revision)
    except Exception as e:  # noqa: BLE001 - every hub failure means the same to the user
        raise ModelError(f'--model {args.model}: could not fetch its config.json ({type(e).__name__}: {e}). Pass a '
                         'local model dir or config.json instead.') from None
    return os.path.dirname(file)


def meta_model(config, trust_remote_code: bool = False):
    """The model with every tensor on the meta device: shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device('meta'):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def shape_of(model) -> Shape:
    from torch import nn

    from lmforge.tuners.llamapro import decoder_layers

    config = model.config.get_text_config()
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, 'head_dim', None) or hidden // heads
    kv_heads = getattr(config, 'num_key_value_heads', None) or heads
    _, layers = decoder_layers(model)
    layer = layers[len(layers) - 1]
    linears = [(n.split('.')[-1], m.in_features, m.out_features) for n, m in layer.named_modules()
               if isinstance(m, nn.Linear)]
    names = {n for n, _, _ in linears}
    experts_per_tok = getattr(config, 'num_experts_per_tok', None)
    if experts_per_tok:
        inter = experts_per_tok * (getattr(config, 'moe_intermediate_size', None) or config.intermediate_size)
        inter += getattr(config, 'shared_expert_intermediate_size', 0) or 0
    else:
        inter = getattr(config, 'intermediate_size', None) or 4 * hidden
    linear_params = sum(m.weight.numel() for n, m in layers.named_modules() if isinstance(m, nn.Linear))
    layer_params = sum(p.numel() for p in layer.parameters())
    return Shape(layers=len(layers), hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                 intermediate=inter, vocab=config.vocab_size, gated_mlp=bool(names & {'gate_proj', 'w1', 'w3'}),
                 tied=bool(getattr(config, 'tie_word_embeddings', False)),
                 params=sum(p.numel() for p in model.parameters()), linear_params=linear_params,
                 layer_params=layer_params, linears=linears)


# ----------------------------------------------------------------------------------------------- activations
def layer_activation_bytes(s: Shape, e: int = 2, full: bool = True, expand_kv: bool = False,
                           lora_targets: list | None = None, lora_rank: int = 8, lora_dropout: float = 0.0,
                           first_layer_frozen_input: bool = False) -> float:
    """Bytes autograd saves per token in one decoder layer (Llama-style, transformers' code, bf16 compute).

    RMSNorm (x -> fp32 -> x * rsqrt(mean(x^2)) -> bf16 -> * weight): the fp32 copy (4h) and rsqrt (4) always; the
    normalised bf16 x (e*h) only when the norm weight trains; its output (e*h) when the next linear's weight trains.
    Attention: q and the output (e*q_dim each; o_proj reads the output in place), k and v (e*kv_dim each, e*q_dim
    when sdpa gets a mask and expands GQA heads), log-sum-exp (4 per head). Gated MLP: gate and up outputs, SiLU
    output (e*I each), and their product when down_proj's weight trains. LoRA, per adapted linear with input width
    d: the input cast for the adapter under autocast (e*d), the dropout mask (d, bool) when dropout > 0, and the
    rank-r activation (e*r).
    """
    h, q, kv, inter = s.hidden, s.q_dim, s.kv_dim, s.intermediate
    kv_saved = q if expand_kv else kv
    norm = 4 * h + 4 + ((2 * e * h) if full else 0)
    attn = 2 * e * q + 2 * e * kv_saved + 4 * s.heads
    mlp = (4 if full else 3) * e * inter if s.gated_mlp else (2 if full else 1) * e * inter
    total = 2 * norm + attn + mlp
    if first_layer_frozen_input:
        total -= norm  # its input needs no gradient: the first norm saves nothing
    if lora_targets:
        widths = {n: i for n, i, _ in s.linears}
        for name in lora_targets:
            d = widths.get(name, h)
            total += e * d + (d if lora_dropout > 0 else 0) + e * lora_rank
    return total


def head_activation_bytes(s: Shape, e: int = 2, full: bool = True) -> float:
    """Bytes saved per token outside the decoder layers: the final norm (as in a layer) and, when the LM head trains,
    its input."""
    return 4 * s.hidden + 4 + ((2 * e * s.hidden) if full else 0) + (e * s.hidden if full else 0)


def loss_bytes_per_token(s: Shape, e: int = 2) -> tuple[float, float]:
    """(saved, transient) bytes per trained token of the loss: the fp32 log-probabilities cross-entropy saves, and
    in its backward their gradient and the logits' fp32 gradient (the cast back to the compute dtype comes after
    the first of them is freed)."""
    return 4 * s.vocab, 8 * s.vocab


def layer_backward_transient(s: Shape, e: int = 2) -> float:
    """Bytes per token a layer's backward allocates on top of what is saved: the gradients of the MLP
    intermediates (three of width I) and of the residual stream (two of width h)."""
    return e * (3 * s.intermediate + 2 * s.hidden)


@dataclass
class Estimate:
    weights: float
    gradients: float
    optimizer: float
    optimizer_step_temp: float
    activations_saved: float  # what autograd holds at the start of backward
    activations_peak: float  # ... plus the largest transient of backward
    activations_no_ckpt: float
    activations_ckpt: float
    saved_by_model: float  # what the model's forward saves without checkpointing (the loss's share excluded)
    peak: float
    trainable: int
    total: int
    notes: list = field(default_factory=list)


def _optimizer_bytes(optim: str, state_bytes: int) -> float:
    optim = optim.lower()
    if '8bit' in optim:
        return 2
    if optim.startswith(('sgd', 'adafactor')):
        return 0
    if 'lion' in optim:
        return state_bytes
    return 2 * state_bytes


def _lora_targets(model, args) -> list[str]:
    """Leaf names of one decoder layer's linear layers that got LoRA-style adapters."""
    from lmforge.tuners.llamapro import decoder_layers

    _, layers = decoder_layers(model)
    layer = layers[len(layers) - 1]
    return [n.split('.')[-1] for n, m in layer.named_modules()
            if hasattr(m, 'base_layer') and type(m).__module__.startswith('peft.')]


def estimate_memory(args, config=None) -> tuple[Estimate, Shape]:
    """The estimate for ``args`` (EstimateArgs) on ``config`` (default: read from --model)."""
    from lmforge.tuners import TUNERS

    config = config if config is not None else load_config(args)
    model = meta_model(config, args.trust_remote_code)
    shape = shape_of(model)
    tuner = args.tuner_type
    notes = []
    if args.init_weights in ('pissa', 'olora', 'loftq'):
        args.init_weights = 'true'  # same parameters; their initialisation cannot run on the meta device
    try:
        with open(os.devnull, 'w') as quiet, contextlib.redirect_stdout(quiet), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = TUNERS[tuner](model, args)
    except (ValueError, RuntimeError, NotImplementedError, TypeError) as e:
        raise ArgumentError('tuner_type', f'cannot apply {tuner} to {type(model).__name__} on the meta device: '
                                          f'{e}') from None
    e = DTYPE_BYTES[args.torch_dtype]
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    adapters = tuner in ADAPTER_TUNERS
    train_bytes = 4 if adapters else e  # peft keeps adapter weights in fp32
    world = args.nproc_per_node * args.nnodes
    zero = int(args.deepspeed[4]) if args.deepspeed and args.deepspeed.startswith('zero') else None
    offload = bool(args.deepspeed and 'offload' in args.deepspeed)

    # weights
    frozen = total - trainable
    if args.quant_bits:
        bits = {4: 4.127 if args.bnb_4bit_use_double_quant else 4.5, 8: 8.06}[args.quant_bits]
        if args.quant_method == 'hqq':
            bits = args.quant_bits + 0.5
        weights = shape.linear_params * bits / 8 + (frozen - shape.linear_params) * e + trainable * train_bytes
    else:
        weights = frozen * e + trainable * train_bytes
    if zero == 3:
        weights = weights / world + 2 * shape.layer_params * e
    # gradients and optimizer states
    grads = trainable * train_bytes
    if zero is not None:
        grads = trainable * e / (world if zero >= 2 else 1)
        opt = 0.0 if offload else 12 * trainable / (world if zero >= 1 else 1)
        opt_temp = 0.0 if offload else 4 * trainable / (world if zero >= 1 else 1)
        if zero == 0:
            opt, opt_temp = 12 * trainable, 4 * trainable
        notes.append(f'DeepSpeed ZeRO-{zero}{" offload" if offload else ""} over {world} GPU(s): fp32 master '
                     'weights and Adam states (12 bytes/param)' + (' on CPU' if offload else ''))
    else:
        opt = trainable * _optimizer_bytes(args.optim, train_bytes)
        opt_temp = trainable * train_bytes if opt else 0.0
    if args.use_galore:
        notes.append('GaLore: optimizer states of projected weights are rank-r; counted as full AdamW (upper bound)')

    # activations
    tokens = args.per_device_train_batch_size * args.max_length
    kept = tokens * args.trained_token_ratio
    full = not adapters
    attn = args.attn_impl or 'sdpa'
    # padding-free sdpa runs per sample (lmforge.train.varlen: no mask, GQA heads not expanded); eager expands
    expand_kv = attn == 'eager' and args.padding_free and shape.kv_heads != shape.heads
    lora_targets = _lora_targets(model, args) if tuner in ('lora', 'longlora', 'adalora') else []
    per_layer = layer_activation_bytes(shape, e, full=full, expand_kv=expand_kv, lora_targets=lora_targets,
                                       lora_rank=args.lora_rank, lora_dropout=args.lora_dropout)
    if attn == 'eager':
        per_layer += shape.heads * args.max_length * (4 + e)  # softmax probabilities, fp32 and cast (quadratic)
        notes.append('eager attention saves the attention probabilities: memory grows with length^2')
    first_frozen = 0 if full else 4 * shape.hidden + 4
    head = head_activation_bytes(shape, e, full=full)
    loss_saved, loss_transient = loss_bytes_per_token(shape, e)
    layers_saved = shape.layers * per_layer - first_frozen
    # backward starts with everything saved plus the loss's gradients; later a layer's backward holds what is still
    # saved below it (checkpointing: the layer inputs plus the one layer recomputed) and its own gradients
    transient = tokens * layer_backward_transient(shape, e)
    saved_no_ckpt = tokens * (layers_saved + head) + kept * loss_saved
    peak_no_ckpt = max(saved_no_ckpt + kept * loss_transient, tokens * layers_saved + transient)
    inputs = tokens * shape.layers * e * shape.hidden
    saved_ckpt = inputs + tokens * head + kept * loss_saved
    peak_ckpt = max(saved_ckpt + kept * loss_transient, inputs + tokens * per_layer + transient)
    ckpt = args.gradient_checkpointing
    act_saved = saved_ckpt if ckpt else saved_no_ckpt
    act_peak = peak_ckpt if ckpt else peak_no_ckpt
    if not shape.gated_mlp:
        notes.append('activation model calibrated on gated-MLP (Llama-style) blocks; this model is approximated')
    if args.use_liger_kernel:
        notes.append('Liger kernels save less than counted here (fused norm/SwiGLU/cross-entropy): an upper bound')
    peak = weights + opt + max(act_peak, grads + opt_temp)
    return Estimate(weights=weights, gradients=grads, optimizer=opt, optimizer_step_temp=opt_temp,
                    activations_saved=act_saved, activations_peak=act_peak, activations_no_ckpt=peak_no_ckpt,
                    activations_ckpt=peak_ckpt, saved_by_model=tokens * (layers_saved + head), peak=peak,
                    trainable=trainable, total=total, notes=notes), shape


def fits(peak: float, gpu_gb: float) -> bool:
    return peak * 1.05 + GIB <= gpu_gb * GB


def format_estimate(args, est: Estimate, shape: Shape) -> str:
    def gib(x):
        return f'{x / GIB:9.2f} GiB'

    ckpt = 'on' if args.gradient_checkpointing else 'off'
    quant = f', {args.quant_method} {args.quant_bits}-bit base' if args.quant_bits else ''
    ds = f', DeepSpeed {args.deepspeed} x {args.nproc_per_node * args.nnodes} GPUs' if args.deepspeed else ''
    lines = [
        f'lmforge estimate: {args.model}',
        f'  {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads ({shape.kv_heads} kv), MLP '
        f'{shape.intermediate}, vocab {shape.vocab}; {est.total / 1e9:.3f} B parameters, '
        f'{est.trainable / 1e6:.2f} M trainable ({100 * est.trainable / max(est.total, 1):.2f}%)',
        f'  tuner {args.tuner_type}, {args.torch_dtype if args.torch_dtype != "auto" else "bfloat16"}{quant}, '
        f'batch {args.per_device_train_batch_size} x {args.max_length} tokens, gradient checkpointing {ckpt}{ds}',
        '',
        f'  {"weights":<34}{gib(est.weights)}',
        f'  {"gradients":<34}{gib(est.gradients)}',
        f'  {"optimizer states":<34}{gib(est.optimizer)}',
        f'  {"activations, checkpointing off":<34}{gib(est.activations_no_ckpt)}' + ('' if ckpt == 'on' else '  <-'),
        f'  {"activations, checkpointing on":<34}{gib(est.activations_ckpt)}' + ('  <-' if ckpt == 'on' else ''),
        f'  {"peak (torch max allocated)":<34}{gib(est.peak)}',
        '',
        '  fits (peak * 1.05 + 1 GiB CUDA context):',
    ]
    for size in args.gpu_memory:
        name = GPUS.get(float(size), '')
        mark = 'yes' if fits(est.peak, size) else 'no '
        lines.append(f'    {size:5.0f} GB {name:<22} {mark}')
    if not fits(est.peak, max(args.gpu_memory)) and not args.gradient_checkpointing:
        lines.append('  hint: --gradient_checkpointing true saves most activation memory')
    for note in est.notes:
        lines.append(f'  note: {note}')
    return '\n'.join(lines)


def run_estimate(args) -> dict:
    est, shape = estimate_memory(args)
    print(format_estimate(args, est, shape), flush=True)
    return {'estimate': est.__dict__, 'shape': shape.__dict__,
            'fits': {size: fits(est.peak, size) for size in args.gpu_memory}}


# ----------------------------------------------------------------------------------------------- measuring (CPU)
def measure_saved_bytes(model, batch: dict, autocast_dtype=None) -> int:
    """Bytes of the distinct tensors autograd saves during ``model(**batch)`` (parameters and their views
    excluded): the activation memory the estimate's ``activations_saved`` term (without the loss) predicts."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    device = next(model.parameters()).device.type
    ctx = torch.autocast(device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        out = model(**batch, use_cache=False)
    del out
    return sum(seen.values())


def measure_peak_bytes(step) -> int:
    """Peak of live CPU memory allocated by torch while ``step()`` runs, above what was allocated before (torch's
    profiler records every allocation and free)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = sorted((r.start_ns(), r.nbytes()) for r in prof.profiler.kineto_results.events()
                     if r.name() == '[memory]')
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak

