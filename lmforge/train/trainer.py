"""ONE training path for every tuner: transformers' Trainer with three additions.

1. The loss: token-level cross-entropy on the trained positions only, with the LM head computed only there
   (``logits_to_keep`` as a boolean mask) where the model supports it, normalised by the number of trained tokens
   of the whole optimizer step (gradient accumulation gives the same objective as one big batch).
2. Throughput: non-pad tokens per forward are counted, and every log carries tokens/s, peak memory and MFU.
3. Checkpoints are written to a staging directory and renamed into place when complete, so a crash never leaves a
   half-written ``checkpoint-N`` that resuming could pick; each one also holds ``args.json``, the chat template and
   the generation config used.

Items 2 and 3 (and the NaN/inf stop) live in `LmTrainerMixin`, which the RLHF trainers (subclasses of TRL's) share.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, Trainer, TrainerCallback

from lmforge.errors import LmforgeError
from lmforge.templates import IGNORE_INDEX
from lmforge.train.metrics import MfuMeter, peak_memory_mb

STAGING = '.staging'


class LmTrainerMixin:
    """What every lmforge trainer adds to a transformers ``Trainer`` (subclass): throughput, memory and MFU in each
    training log, a NaN/inf loss stopping before the update, and atomic checkpoints with lmforge's extras.

    Put it first in the bases: ``class X(LmTrainerMixin, SomeTrlTrainer)``. Subclasses add to ``tokens_seen`` /
    ``samples_seen`` where they see their batches (`LmTrainer.compute_loss`, the RLHF trainers' ``training_step``).
    """

    def __init__(self, *args, checkpoint_extras=None, mfu: MfuMeter | None = None, **kwargs):
        self.checkpoint_extras = checkpoint_extras  # callable(checkpoint_dir) writing args/template/generation
        self.mfu = mfu
        self.tokens_seen = 0
        self.samples_seen = 0
        self._staging_dir = None
        super().__init__(*args, **kwargs)
        self._last_log = (time.perf_counter(), 0, 0)
        if any(type(cb) is PrinterCallback for cb in self.callback_handler.callbacks):  # no progress bar
            self.remove_callback(PrinterCallback)
            self.add_callback(RankZeroPrinter)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):  # before the optimizer step: the weights and last checkpoint stay good
            raise TrainingDiverged(
                f'the loss became {loss.item()} at step {self.state.global_step + 1}; training stopped before that '
                f'step\'s update. Likely causes: a learning rate too high (now {self._get_learning_rate():.3g}), fp16 '
                'overflow (use bf16 or fp32), or broken data rows. The last good checkpoint is kept in '
                f'{self.args.output_dir}; resume from it with --resume_from_checkpoint latest after changing the cause.')
        return loss

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict, start_time=None) -> None:
        if 'loss' in logs:  # a training log: add throughput since the previous one
            now, tokens, samples = time.perf_counter(), self.tokens_seen, self.samples_seen
            last_time, last_tokens, last_samples = self._last_log
            if now > last_time:
                rate = (tokens - last_tokens) / (now - last_time)
                logs['tokens_per_second'] = round(rate, 1)
                logs['samples_per_second'] = round((samples - last_samples) / (now - last_time), 3)
                if self.mfu is not None:
                    logs['mfu'] = round(self.mfu(rate), 5)
            logs['peak_memory_mb'] = round(peak_memory_mb(), 1)
            self._last_log = (now, tokens, samples)
        super().log(logs, start_time)

    # ------------------------------------------------------------------ checkpoints
    def _get_output_dir(self, trial):
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = self.args.output_dir
        self._staging_dir = os.path.join(run_dir, STAGING)
        name = f'checkpoint-{self.state.global_step}'
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        best = self.state.best_global_step and os.path.join(run_dir, f'checkpoint-{self.state.best_global_step}')
        if best and (self.state.best_global_step == self.state.global_step or os.path.isdir(best)):
            self.state.best_model_checkpoint = best  # transformers looked for it in the staging dir
        # several processes: each writes its own RNG state into the staged checkpoint; it moves once all have
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._publish_checkpoint(run_dir, name)
        self.accelerator.wait_for_everyone()  # every process sees the checkpoint in place

    def _publish_checkpoint(self, run_dir: str, name: str) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        staged, final = os.path.join(run_dir, STAGING, name), os.path.join(run_dir, name)
        if self.checkpoint_extras is not None:
            self.checkpoint_extras(staged)
        if self.state.best_model_checkpoint:  # with the best checkpoint's final path
            self.state.save_to_json(os.path.join(staged, 'trainer_state.json'))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(staged, final)
        shutil.rmtree(os.path.join(run_dir, STAGING), ignore_errors=True)
        rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)


class LmTrainer(LmTrainerMixin, Trainer):
    def __init__(self, *args, use_logits_to_keep: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        # compute_loss below normalises by the step's trained-token count itself; this makes Trainer count it.
        self.model_accepts_loss_kwargs = True
        self.use_logits_to_keep = use_logits_to_keep
        from lmforge.train.sharding import SampleTrace
        self.sample_trace = SampleTrace.from_env()  # LMFORGE_TRACE_SAMPLES: which samples each process trained
        if self.sample_trace is not None:
            self.add_callback(self.sample_trace)
        from lmforge.tuners.features import AdaLoraPenalty
        self.penalty = AdaLoraPenalty.of(self.model)  # a loss term the tuner adds (peft adds it to model losses)

    def get_train_dataloader(self):
        """Several processes: each sample once per epoch (lmforge.train.sharding), not accelerate's repeats."""
        from lmforge.train.sharding import tail_padded_dataloader
        return tail_padded_dataloader(self) or super().get_train_dataloader()

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and self.sample_trace is not None:
            self.sample_trace.record(self.state, inputs)
        labels = inputs.pop('labels')
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        if model.training:
            mask = inputs.get('attention_mask')
            self.tokens_seen += int(mask.sum()) if mask is not None else inputs['input_ids'].numel()
            pos = inputs.get('position_ids')  # padding-free: one sample starts wherever a position is 0
            self.samples_seen += int((pos == 0).sum()) if pos is not None and mask is None else len(labels)
        if self.use_logits_to_keep:
            positions = torch.zeros_like(labels, dtype=torch.bool)
            positions[:, :-1] = keep
            outputs = model(**inputs, logits_to_keep=positions, use_cache=False)
            logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
        else:
            outputs = model(**inputs, use_cache=False)
            logits = outputs.logits[:, :-1][keep]
        loss = F.cross_entropy(logits.float(), targets[keep], reduction='sum')
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss / keep.sum().clamp(min=1)
        if self.penalty is not None and model.training:
            # once per optimizer step: the Trainer divides by the accumulation steps only a loss it got no count for
            penalty = self.penalty()
            loss = loss + (penalty / self.args.gradient_accumulation_steps if num_items_in_batch is not None
                           else penalty)
        return (loss, outputs) if return_outputs else loss


class TrainingDiverged(LmforgeError):
    """The loss became NaN or infinite."""


class GracefulStop(TrainerCallback):
    """SIGTERM or SIGINT (preemption, Ctrl-C): finish the current step, save a checkpoint, stop cleanly.
    A second SIGINT (Ctrl-C pressed again, more than a second later) interrupts at once.

    Under several processes the signal may reach only some of them (a node being preempted, ``kill`` of one
    worker): at every step end the processes agree (an all-reduce of the signal number), so all of them save the same
    step and stop together instead of the others waiting for the stopped one until the timeout."""

    def __init__(self):
        self.signal = None
        self._received = 0  # the signal number this process got
        self._received_at = 0.0
        self._previous = {}

    def _handle(self, signum, frame):
        if self._received:
            # torchrun passes a terminal's Ctrl-C on to workers that got it already: the same press, not a second
            if signum == signal.SIGINT and time.monotonic() - self._received_at > 1:
                raise KeyboardInterrupt
            return
        self._received, self._received_at = signum, time.monotonic()
        print(f'\n[lmforge] {signal.Signals(signum).name} received'
              f'{_rank_note()}: saving a checkpoint after this step, then stopping', flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        received = _agreed_signal(self._received, args.device)
        if received:
            self.signal = signal.Signals(received).name
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _agreed_signal(signum: int, device) -> int:
    """The largest signal number any process received (this one's alone when it runs by itself)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def _rank_note() -> str:
    return f' by rank {os.environ["RANK"]}' if int(os.environ.get('WORLD_SIZE', '1')) > 1 else ''


class RankZeroPrinter(PrinterCallback):
    """The logs printed once for the run: transformers' printer speaks on the first process of every machine."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            super().on_log(args, state, control, logs=logs, **kwargs)


class SaveAtEnd(TrainerCallback):
    """Always leave a checkpoint of the final step, whatever --save_steps says."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True


def supports_logits_to_keep(model) -> bool:
    """Whether the (possibly PEFT-wrapped) model's forward takes a boolean ``logits_to_keep`` mask."""
    import inspect

    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    return 'logits_to_keep' in inspect.signature(base.forward).parameters


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint (one with its trainer state) in ``output_dir``."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith('checkpoint-') and name[11:].isdigit() and \
                os.path.isfile(os.path.join(path, 'trainer_state.json')):
            steps.append((int(name[11:]), path))
    return max(steps)[1] if steps else None


def write_json(path: str, data) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)
    os.replace(tmp, path)
