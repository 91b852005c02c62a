"""TRL's trainers with lmforge's training path: `LmTrainerMixin` (tokens/s, MFU and peak memory in every log, the
NaN/inf stop, atomic checkpoints with args.json/template/generation config) on top of each TRL trainer, fed the rows
`lmforge.rlhf.data` tokenized through the model's own chat template.

    dpo          trl.DPOTrainer                 rows: prompt_ids, chosen_ids, rejected_ids
    orpo         trl.experimental.orpo          the same, in the legacy column layout those trainers read
    cpo, simpo   trl.experimental.cpo           (simpo = CPOTrainer with loss_type="simpo")
    kto          trl.KTOTrainer                 rows: prompt_ids, completion_ids, label
    rm           trl.RewardTrainer              rows: chosen_ids, rejected_ids (prompt + answer)
    grpo         trl.GRPOTrainer                rows: prompt (messages) + the dataset's columns for the rewards
    gkd          trl.experimental.gkd           rows: input_ids, labels, prompt_ids (`GkdCollator`)
    ppo          lmforge.rlhf.ppo.PpoTrainer    (TRL 1.16 has no PPOTrainer)

The reference model of a freshly initialised LoRA adapter is the base with adapters disabled: TRL copies the adapter
into a "ref" adapter when it is handed a `PeftModel`; `use_disabled_adapter_as_reference` removes that copy, so the
reference forward runs the base weights alone. When training continues existing adapters (``--adapters``), the copy
stays: the reference is the model as it was before this run.

Under several processes, dpo, kto, rm, orpo, cpo and simpo train each row once per epoch (`PaddingRowsMixin`):
accelerate would complete the epoch's last global batch with rows from its start, trained twice.
"""
from __future__ import annotations

import torch

from lmforge.train.sharding import PaddingRowsMixin
from lmforge.train.trainer import LmTrainerMixin


class CountingMixin:
    """Adds each training batch's non-pad tokens and rows to the throughput counters of `LmTrainerMixin`."""

    rows_per_sequence = 1  # 2 where a batch holds chosen and rejected sequences of the same rows

    def training_step(self, model, inputs, num_items_in_batch=None):
        if isinstance(inputs, dict):
            masks = [v for k, v in inputs.items() if k.endswith('attention_mask') and k != 'prompt_attention_mask'
                     and k != 'KL_attention_mask' and torch.is_tensor(v)]
            if masks:
                self.tokens_seen += int(sum(m.sum() for m in masks))
                self.samples_seen += int(masks[0].shape[0] // self.rows_per_sequence)
        return super().training_step(model, inputs, num_items_in_batch)


def use_disabled_adapter_as_reference(trainer) -> None:
    """Drop the "ref" adapter TRL made as a copy of a fresh (zero-B, so base-equal) LoRA adapter: its reference
    forwards then run with adapters disabled, on the base weights alone."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, 'peft_config') and 'ref' in model.peft_config:
        model.delete_adapter('ref')
        model.set_adapter('default')


def _is_pretokenized(dataset, *columns) -> bool:
    return all(c in dataset.column_names for c in columns)


def dpo_trainer_class():
    from trl import DPOTrainer

    class LmDPOTrainer(PaddingRowsMixin, CountingMixin, LmTrainerMixin, DPOTrainer):
        rows_per_sequence = 2

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if _is_pretokenized(dataset, 'prompt_ids', 'chosen_ids', 'rejected_ids'):
                return dataset  # tokenized and truncated by lmforge.rlhf.data
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return LmDPOTrainer


def kto_trainer_class():
    from trl import KTOTrainer

    class LmKTOTrainer(PaddingRowsMixin, CountingMixin, LmTrainerMixin, KTOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not _is_pretokenized(dataset, 'prompt_ids', 'completion_ids', 'label'):
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if self.calculate_KL:  # TRL's KL estimate: each prompt with its batch neighbour's completion
                def add_kl(batch):
                    batch['KL_completion_ids'] = [batch['completion_ids'][-1]] + batch['completion_ids'][:-1]
                    return batch
                dataset = dataset.map(add_kl, batched=True, batch_size=args.per_device_train_batch_size)
            return dataset

    return LmKTOTrainer


def legacy_pair_columns(row: dict) -> dict:
    """prompt/chosen/rejected ids -> the columns ORPOTrainer and CPOTrainer read (labels -100 on the prompt)."""
    p, c, r = row['prompt_ids'], row['chosen_ids'], row['rejected_ids']
    return {'prompt_input_ids': p, 'prompt_attention_mask': [1] * len(p),
            'chosen_input_ids': p + c, 'chosen_attention_mask': [1] * (len(p) + len(c)),
            'chosen_labels': [-100] * len(p) + c,
            'rejected_input_ids': p + r, 'rejected_attention_mask': [1] * (len(p) + len(r)),
            'rejected_labels': [-100] * len(p) + r}


def _legacy_pair_trainer(base):
    class Legacy(PaddingRowsMixin, CountingMixin, LmTrainerMixin, base):
        def tokenize_row(self, feature, model=None):
            if 'chosen_labels' in feature:
                return {}  # already in the legacy layout (legacy_pair_columns)
            return super().tokenize_row(feature, model)

    Legacy.__name__ = f'Lm{base.__name__}'
    return Legacy


def orpo_trainer_class():
    """ORPO with its SFT term on the chosen answer only, as in the paper (L_SFT = -log P(y_w | x)) and as lmforge
    trains answers everywhere; TRL 1.16's ORPOTrainer also takes that NLL over the prompt tokens."""
    import torch.nn.functional as F
    from trl.experimental.orpo import ORPOTrainer

    base = _legacy_pair_trainer(ORPOTrainer)

    class LmORPOTrainer(base):
        def concatenated_forward(self, model, batch):
            out = list(super().concatenated_forward(model, batch))
            chosen_logits = out[2]  # (rows, width - 1, vocab): position t predicts token t + 1
            labels = batch['chosen_labels'][:, 1:].to(chosen_logits.device)
            width = chosen_logits.shape[1]
            if labels.shape[1] < width:
                labels = F.pad(labels, (0, width - labels.shape[1]), value=-100)
            out[4] = F.cross_entropy(chosen_logits.reshape(-1, chosen_logits.shape[-1]).float(),
                                     labels[:, :width].reshape(-1), ignore_index=-100)
            return tuple(out)

    return LmORPOTrainer


def cpo_trainer_class():
    from trl.experimental.cpo import CPOTrainer
    return _legacy_pair_trainer(CPOTrainer)


def reward_trainer_class():
    from trl import RewardTrainer

    class LmRewardTrainer(PaddingRowsMixin, CountingMixin, LmTrainerMixin, RewardTrainer):
        rows_per_sequence = 2

    return LmRewardTrainer


def grpo_trainer_class():
    from trl import GRPOTrainer

    class LmGRPOTrainer(CountingMixin, LmTrainerMixin, GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self.tokens_seen += int(out['prompt_mask'].sum() + out['completion_mask'].sum())
                self.samples_seen += int(out['completion_mask'].shape[0])
            return out

    return LmGRPOTrainer


class GkdCollator:
    """SFT-encoded rows -> what GKDTrainer reads: right-padded input_ids/attention_mask/labels, and the left-padded
    prompts (``prompts``, ``prompt_attention_mask``) it generates on-policy completions from."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(s['input_ids']) for s in batch)
        pwidth = max(len(s['prompt_ids']) for s in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        prompts = torch.full((len(batch), pwidth), self.pad, dtype=torch.long)
        pmask = torch.zeros((len(batch), pwidth), dtype=torch.long)
        for i, s in enumerate(batch):
            n, p = len(s['input_ids']), len(s['prompt_ids'])
            ids[i, :n] = torch.tensor(s['input_ids'])
            labels[i, :n] = torch.tensor(s['labels'])
            mask[i, :n] = 1
            prompts[i, pwidth - p:] = torch.tensor(s['prompt_ids'])
            pmask[i, pwidth - p:] = 1
        return {'input_ids': ids, 'attention_mask': mask, 'labels': labels, 'prompts': prompts,
                'prompt_attention_mask': pmask}


def gkd_trainer_class():
    from trl.experimental.gkd import GKDTrainer

    class LmGKDTrainer(CountingMixin, LmTrainerMixin, GKDTrainer):
        """GKD, logging also how long the trained completions were (dataset, student or teacher samples)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if 'labels' in inputs:  # GKDTrainer swaps in generated sequences in place
                lengths = (inputs['labels'] != -100).sum(dim=1).float()
                self._gkd_metrics.setdefault('completions/mean_length', []).append(lengths.mean().item())
            return loss

        @property
        def _gkd_metrics(self):
            if not hasattr(self, '_lm_gkd_metrics'):
                self._lm_gkd_metrics = {}
            return self._lm_gkd_metrics

        def log(self, logs, start_time=None):
            if 'loss' in logs:
                for key, values in self._gkd_metrics.items():
                    if values:
                        logs[key] = sum(values) / len(values)
                self._gkd_metrics.clear()
            super().log(logs, start_time)

    return LmGKDTrainer
