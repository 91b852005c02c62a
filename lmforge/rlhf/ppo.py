"""PPO (Schulman et al. 2017; the RLHF recipe of Ouyang et al. 2022 / TRL's former PPOTrainer), written here
because TRL 1.16 ships no PPOTrainer. A transformers `Trainer` subclass, so it shares lmforge's training path
(`LmTrainerMixin`: logging.jsonl, tokens/s, atomic checkpoints) and TRL's utilities (log-softmax, dropout).

One optimizer step of the Trainer = one PPO iteration on ``--per_device_train_batch_size`` prompts:

1. rollout: sample one completion per prompt from the policy (``generate``, stopping on the chat template's
   end-of-turn tokens; ``--temperature/--top_p/--top_k``, at most ``--max_completion_length`` tokens);
2. score: the reward model(s) (``--reward_model``, e.g. an `rlhf --rlhf_type rm` checkpoint) and/or reward functions
   (``--reward_funcs``), weighted (``--reward_weights``); ``--missing_eos_penalty`` for unfinished completions;
3. per-token reward ``-kl_coef * (log pi - log pi_ref)`` plus the score on the last token; values from a linear value
   head on the policy's last hidden state (a shared backbone, zero-initialised head); GAE (``--gamma``,
   ``--lam``) advantages, whitened;
4. ``--num_ppo_epochs`` passes over ``--num_mini_batches`` minibatches: clipped policy loss (``--cliprange``) +
   ``--vf_coef`` x clipped value loss (``--cliprange_value``). All but the last minibatch step the optimizer here;
   the Trainer steps after the last, then the learning-rate schedule advances once.

The reference is the base with adapters disabled for a fresh LoRA adapter, else ``--ref_model`` or a frozen copy of
the starting policy. Checkpoints hold the policy as `lmforge sft` saves it (adapter or full weights, loadable by
`lmforge infer`) plus ``value_head.safetensors``.

Logged: ``reward`` / ``reward_std`` (the scores), ``rewards/<name>/mean``, ``kl`` (per sequence, summed over tokens),
``completions/mean_length``, ``completions/clipped_ratio``, ``policy/clipfrac``, ``policy/approxkl``,
``loss/policy``, ``loss/value``, ``val/mean``.
"""
from __future__ import annotations

import contextlib
import os
from collections import defaultdict

import torch
import torch.nn as nn
from transformers import GenerationConfig, Trainer

from lmforge.train.trainer import LmTrainerMixin

VALUE_HEAD = 'value_head.safetensors'


class PolicyWithValueHead(nn.Module):
    """The policy LM and a scalar value head on its last hidden state, trained together."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    @property
    def config(self):
        return self.policy.config

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False):
        """What the Trainer calls for --gradient_checkpointing (the policy's layers; the value head is one linear)."""
        self.policy.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                    every_n_layers=every_n_layers, offload=offload)

    def forward(self, input_ids, attention_mask, position_ids=None):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)
        return out.logits, values


def _masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _masked_whiten(x, mask, shift_mean: bool = True):
    mean = _masked_mean(x, mask)
    var = _masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


class PpoTrainer(LmTrainerMixin, Trainer):
    def __init__(self, *args, ref_model=None, reward_funcs=(), reward_weights=None, stop_token_ids=(),
                 ppo: dict | None = None, **kwargs):
        from trl.trainer.utils import disable_dropout_in_model

        kwargs.setdefault('data_collator', lambda rows: rows)
        super().__init__(*args, **kwargs)
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.to(self.args.device).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
        self.reward_funcs = list(reward_funcs)
        self.reward_weights = list(reward_weights or [1.0] * len(self.reward_funcs))
        self.stop_token_ids = list(stop_token_ids)
        self.ppo = {'num_ppo_epochs': 4, 'num_mini_batches': 1, 'kl_coef': 0.05, 'cliprange': 0.2, 'vf_coef': 0.1,
                    'cliprange_value': 0.2, 'gamma': 1.0, 'lam': 0.95, 'whiten_rewards': False,
                    'missing_eos_penalty': None, 'temperature': 0.9, 'top_p': 1.0, 'top_k': 50,
                    'max_completion_length': 64, **(ppo or {})}
        disable_dropout_in_model(self.model)  # old and new log-probs must come from the same function
        self._ppo_metrics = defaultdict(list)

    # ------------------------------------------------------------------ rollout
    def _reference_context(self, policy):
        if self.ref_model is None and hasattr(policy, 'disable_adapter'):
            return policy.disable_adapter()
        return contextlib.nullcontext()

    def _generate(self, wrapper, rows):
        from trl.models.utils import disable_gradient_checkpointing

        tok = self.processing_class
        pad = tok.pad_token_id
        prompts = [r['prompt_ids'] for r in rows]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.args.device), mask.to(self.args.device)
        cfg = self.ppo
        gen = GenerationConfig(do_sample=True, temperature=cfg['temperature'], top_p=cfg['top_p'],
                               top_k=cfg['top_k'] or None, max_new_tokens=cfg['max_completion_length'],
                               eos_token_id=self.stop_token_ids, pad_token_id=pad)
        policy = wrapper.policy
        was_training = policy.training
        policy.eval()
        with torch.no_grad(), disable_gradient_checkpointing(policy, self.args.gradient_checkpointing_kwargs):
            seqs = policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        policy.train(was_training)
        completion = seqs[:, width:]
        stops = torch.tensor(self.stop_token_ids, device=completion.device)
        is_stop = torch.isin(completion, stops)
        first = torch.where(is_stop.any(1), is_stop.int().argmax(1), torch.full_like(is_stop[:, 0], 10**9,
                                                                                       dtype=torch.long))
        positions = torch.arange(completion.shape[1], device=completion.device)
        cmask = (positions[None, :] <= first[:, None]).long()
        length = int(cmask.sum(1).max())
        completion, cmask = completion[:, :length], cmask[:, :length]
        completion = completion.masked_fill(cmask == 0, pad)
        return ids, mask, completion, cmask, is_stop.any(1)

    def _scores(self, rows, completion, cmask, finished):
        tok = self.processing_class
        ids_list = [c[m.bool()].tolist() for c, m in zip(completion.cpu(), cmask.cpu())]
        texts = tok.batch_decode([[t for t in ids if t not in self.stop_token_ids] for ids in ids_list],
                                 skip_special_tokens=True)
        completions = [[{'role': 'assistant', 'content': t}] for t in texts]
        prompts = [r['prompt'] for r in rows]
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k not in ('prompt', 'prompt_ids')}
        total = torch.zeros(len(rows))
        for func, weight in zip(self.reward_funcs, self.reward_weights):
            values = func(prompts=prompts, completions=completions, completion_ids=ids_list, **columns)
            values = torch.tensor([float('nan') if v is None else float(v) for v in values])
            name = getattr(func, '__name__', type(func).__name__)
            self._ppo_metrics[f'rewards/{name}/mean'].append(torch.nanmean(values).item())
            total += weight * torch.nan_to_num(values, nan=0.0)
        if self.ppo['missing_eos_penalty']:
            total -= self.ppo['missing_eos_penalty'] * (~finished.cpu()).float()
        return total.to(self.args.device)

    def _logprobs_values(self, model, ids, mask, completion, cmask, reference: bool = False):
        from trl.trainer.utils import selective_log_softmax

        seqs = torch.cat([ids, completion], dim=1)
        attn = torch.cat([mask, cmask], dim=1)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        start = ids.shape[1] - 1
        if reference:
            wrapper = self.accelerator.unwrap_model(model)
            target = self.ref_model if self.ref_model is not None else wrapper.policy
            with self._reference_context(wrapper.policy):
                logits = target(input_ids=seqs, attention_mask=attn, position_ids=pos, use_cache=False).logits
            values = None
        else:
            logits, values = model(seqs, attn, pos)
            values = values[:, start:-1]
        logits = logits[:, start:-1].float() / self.ppo['temperature']
        return selective_log_softmax(logits, completion), values

    # ------------------------------------------------------------------ the PPO iteration
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            raise NotImplementedError('ppo does not evaluate a loss on held-out data')
        cfg, m = self.ppo, self._ppo_metrics
        wrapper = self.accelerator.unwrap_model(model)
        ids, mask, completion, cmask, finished = self._generate(wrapper, inputs)
        scores = self._scores(inputs, completion, cmask, finished)
        self.tokens_seen += int(mask.sum() + cmask.sum())
        self.samples_seen += len(inputs)
        fmask = cmask.float()
        with torch.no_grad():
            old_logp, old_values = self._logprobs_values(model, ids, mask, completion, cmask)
            ref_logp, _ = self._logprobs_values(model, ids, mask, completion, cmask, reference=True)
            old_values = old_values.float() * fmask
            kl = (old_logp - ref_logp) * fmask
            if cfg['whiten_rewards']:
                scores = _masked_whiten(scores, torch.ones_like(scores), shift_mean=False)
            rewards = -cfg['kl_coef'] * kl
            last = (cmask.sum(1) - 1).clamp(min=0)
            rewards[torch.arange(len(last)), last] += scores
            advantages = torch.zeros_like(rewards)
            gae = torch.zeros_like(rewards[:, 0])
            for t in reversed(range(rewards.shape[1])):
                next_value = old_values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(gae)
                delta = rewards[:, t] + cfg['gamma'] * next_value - old_values[:, t]
                gae = delta + cfg['gamma'] * cfg['lam'] * gae
                advantages[:, t] = gae
            returns = advantages + old_values
            advantages = _masked_whiten(advantages, fmask) * fmask
        m['reward'].append(scores.mean().item())
        m['reward_std'].append(scores.std().item() if len(scores) > 1 else 0.0)
        m['kl'].append(kl.sum(1).mean().item())
        m['objective/non_score_reward'].append((-cfg['kl_coef'] * kl).sum(1).mean().item())
        m['completions/mean_length'].append(cmask.sum(1).float().mean().item())
        m['completions/clipped_ratio'].append((~finished).float().mean().item())

        n = len(inputs)
        minibatches = min(cfg['num_mini_batches'], n)  # the last batch of an epoch may hold fewer prompts
        size = n // minibatches
        updates = cfg['num_ppo_epochs'] * minibatches
        done = 0
        for _ in range(cfg['num_ppo_epochs']):
            order = torch.randperm(n, device=ids.device)
            for k in range(minibatches):
                idx = order[k * size:(k + 1) * size]
                logp, vpred = self._logprobs_values(model, ids[idx], mask[idx], completion[idx], cmask[idx])
                mb_mask = fmask[idx]
                ratio = torch.exp(logp - old_logp[idx])
                adv = advantages[idx]
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg['cliprange'], 1 + cfg['cliprange']))
                pg_loss = _masked_mean(pg, mb_mask)
                vpred = vpred.float()
                vclip = old_values[idx] + (vpred - old_values[idx]).clamp(-cfg['cliprange_value'],
                                                                         cfg['cliprange_value'])
                vf = torch.max((vpred - returns[idx]) ** 2, (vclip - returns[idx]) ** 2)
                vf_loss = 0.5 * _masked_mean(vf, mb_mask)
                loss = pg_loss + cfg['vf_coef'] * vf_loss
                with torch.no_grad():
                    m['policy/clipfrac'].append(_masked_mean((torch.abs(ratio - 1) > cfg['cliprange']).float(),
                                                             mb_mask).item())
                    m['policy/approxkl'].append(0.5 * _masked_mean((logp - old_logp[idx]) ** 2, mb_mask).item())
                    m['loss/policy'].append(pg_loss.item())
                    m['loss/value'].append(vf_loss.item())
                    m['val/mean'].append(_masked_mean(vpred, mb_mask).item())
                done += 1
                if done == updates:
                    return loss  # the Trainer backpropagates this one and steps
                self.accelerator.backward(loss)
                if self.args.max_grad_norm:
                    self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
        return loss

    def log(self, logs: dict, start_time=None) -> None:
        if 'loss' in logs:
            for key, values in self._ppo_metrics.items():
                if values:
                    logs[key] = sum(values) / len(values)
            self._ppo_metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict=None):
        from safetensors.torch import save_file
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        wrapper = self.accelerator.unwrap_model(self.model)
        wrapper.policy.save_pretrained(output_dir)
        save_file({k: v.detach().cpu().contiguous() for k, v in wrapper.v_head.state_dict().items()},
                  os.path.join(output_dir, VALUE_HEAD))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
