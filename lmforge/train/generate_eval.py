"""`--predict_with_generate`: generation metrics at every evaluation during training.

At each evaluation (every --eval_steps and at the end of the run), after the validation loss, the model being trained
answers the validation samples and the answers are scored with the metrics of `lmforge eval`'s open-QA sets
(`lmforge.eval.custom.score_answers`: exact match, BLEU, ROUGE-L). They are logged next to ``eval_loss`` as
``eval_exact_match``, ``eval_bleu``, ``eval_rouge_l`` (so they reach logging.jsonl, TensorBoard, trainer_state.json and
--metric_for_best_model), and the answers of the latest evaluation are written to
OUTPUT_DIR/predictions.jsonl.

The questions: each validation sample gives one, its last trained assistant turn being the reference and the tokens
before that turn the prompt. lmforge's encoding renders that prefix exactly as ``render(messages[:i],
add_generation_prompt=True)`` — the prompt `lmforge infer` builds (see lmforge.templates.encode) — so the prompt text
is decoded from those tokens and tokenized the way the engine tokenizes a prompt. The answers come from the engine's
generation (`PtEngine.generate_rows`: greedy, left-padded batches of --per_device_eval_batch_size rows, stopping at
the template's end-of-turn tokens or after --max_new_tokens) run on the training model itself, in eval mode without
gradients, its training mode restored afterwards. Several processes (DDP) share the questions and gather the answers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from lmforge.infer.engine import PtEngine, RequestConfig
from lmforge.templates import IGNORE_INDEX

PREDICTIONS = 'predictions.jsonl'


@dataclass
class Question:
    prompt: str  # the rendered prompt text, generation prompt included
    reference: str  # the trained answer, without the end-of-turn token(s)


def questions_of(samples, tokenizer, limit: int | None = None) -> list[Question]:
    """One question per encoded validation sample (a list of ``{input_ids, labels}`` or a `TokenStore`), the first
    ``limit`` of them: the last run of trained tokens is the reference answer, everything before it the prompt."""
    out = []
    for i in range(len(samples)):
        if limit is not None and len(out) >= limit:
            break
        ids, labels = samples[i]['input_ids'], samples[i]['labels']
        end = len(labels)
        while end > 0 and labels[end - 1] == IGNORE_INDEX:
            end -= 1
        start = end
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        if end == 0 or start == 0:  # nothing trained, or no prompt before it (a truncated sample)
            continue
        prompt = tokenizer.decode(ids[:start], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        # decoded as the engine decodes an answer (`Sequence`): special tokens (the end of turn) dropped
        out.append(Question(prompt, tokenizer.decode(ids[start:end], skip_special_tokens=True)))
    return out


class GenerateEval:
    """Answers ``questions`` with a model and scores the answers; `attach` calls it at each evaluation."""

    def __init__(self, questions: list[Question], tokenizer, stop_ids: list[int], max_new_tokens: int,
                 batch_size: int, output_dir: str):
        self.questions = questions
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.config = RequestConfig(max_new_tokens=max_new_tokens, temperature=0.0)
        self.batch_size = batch_size
        self.predictions_path = os.path.join(output_dir, PREDICTIONS)

    def answer(self, model, questions: list[Question]) -> list[str]:
        """Greedy answers of ``model`` (put in eval mode for the time it generates)."""
        if not questions:
            return []
        engine = PtEngine.on_model(model, self.tokenizer, self.stop_ids)
        was_training = model.training
        model.eval()
        try:
            texts = []
            for start in range(0, len(questions), self.batch_size):
                rows = [engine.new_sequence(self.tokenizer(q.prompt, add_special_tokens=False)['input_ids'],
                                            self.config) for q in questions[start:start + self.batch_size]]
                engine.generate_rows(rows)
                for r in rows:
                    if r.error:
                        raise RuntimeError(f'--predict_with_generate: generation failed: {r.error}')
                texts += [r.text for r in rows]
            return texts
        finally:
            model.train(was_training)

    def __call__(self, model, step: int, prefix: str = 'eval') -> dict:
        """``{prefix_exact_match, prefix_bleu, prefix_rouge_l}`` of ``model``'s answers; the main process writes
        them, one row per question, to OUTPUT_DIR/predictions.jsonl."""
        from lmforge.eval.custom import score_answers

        rank, world = _rank_world()
        mine = list(range(rank, len(self.questions), world))
        answers = dict(zip(mine, self.answer(model, [self.questions[i] for i in mine])))
        if world > 1:
            import torch.distributed as dist

            parts = [None] * world
            dist.all_gather_object(parts, answers)
            answers = {i: text for part in parts for i, text in part.items()}
        responses = [answers[i] for i in range(len(self.questions))]
        summary, scores = score_answers(responses, [q.reference for q in self.questions])
        if rank == 0:
            self._write(step, responses, scores)
        return {f'{prefix}_{name}': round(value, 4) for name, value in summary.items()}

    def _write(self, step: int, responses: list[str], scores: list[dict]) -> None:
        os.makedirs(os.path.dirname(self.predictions_path), exist_ok=True)
        tmp = self.predictions_path + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            for q, response, score in zip(self.questions, responses, scores):
                row = {'step': step, 'prompt': q.prompt, 'reference': q.reference, 'response': response, **score}
                f.write(json.dumps(row, ensure_ascii=False) + '\n')
        os.replace(tmp, self.predictions_path)


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def attach(trainer, evaluator: GenerateEval) -> None:
    """Add ``evaluator``'s metrics to each evaluation of ``trainer``: its ``evaluation_loop`` is wrapped, so the
    metrics join eval_loss before the Trainer logs them, hands them to the callbacks and picks the best checkpoint."""
    loop = trainer.evaluation_loop

    def evaluation_loop(*args, metric_key_prefix: str = 'eval', **kwargs):
        output = loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        output.metrics.update(evaluator(trainer.model, trainer.state.global_step, metric_key_prefix))
        return output

    trainer.evaluation_loop = evaluation_loop


def setup(trainer, args, tokenizer, val_data, model, log=print) -> GenerateEval:
    """`lmforge sft --predict_with_generate`: the questions of ``val_data``, attached to ``trainer``."""
    from lmforge.errors import ArgumentError
    from lmforge.templates import stop_token_ids

    questions = questions_of(val_data or [], tokenizer, args.eval_generate_limit)
    if not questions:
        raise ArgumentError('predict_with_generate', 'the validation data gave no question to answer (no sample '
                                                     'with a trained answer after its prompt); check --val_dataset / '
                                                     '--split_dataset_ratio')
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    stop_ids = stop_token_ids(tokenizer, getattr(base, 'generation_config', None))
    evaluator = GenerateEval(questions, tokenizer, stop_ids, args.max_new_tokens, args.per_device_eval_batch_size,
                             args.output_dir)
    attach(trainer, evaluator)
    limited = len(questions) == args.eval_generate_limit
    limit = f' (the first {len(questions)}: --eval_generate_limit)' if limited else ''
    log(f'predict_with_generate: {len(questions)} validation questions{limit} answered at each evaluation (greedy, '
        f'at most {args.max_new_tokens} tokens) -> eval_exact_match, eval_bleu, eval_rouge_l; answers in '
        f'{evaluator.predictions_path}')
    return evaluator
