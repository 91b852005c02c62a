"""Open-QA metrics through the standard libraries: exact match, BLEU (sacrebleu), ROUGE-L (rouge-score); Chinese
text is segmented into words with jieba first (both libraries' own tokenizers would see a Chinese sentence as one
token, or drop it)."""
from __future__ import annotations

import re
import unicodedata

_CJK = re.compile(r'[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]')


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text or ''))


def normalize(text: str) -> str:
    """For exact match: Unicode NFKC, case-folded, whitespace collapsed, trimmed."""
    return ' '.join(unicodedata.normalize('NFKC', text or '').casefold().split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def segment(text: str) -> list[str]:
    """Words of ``text``: jieba's segmentation (it keeps Latin words and numbers whole), without whitespace."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w for w in jieba.lcut(text or '') if w.strip()]


class JiebaTokenizer:
    """A rouge-score tokenizer: jieba words, lower-cased."""

    def tokenize(self, text: str) -> list[str]:
        return [w.lower() for w in segment(text)]


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu: its 13a tokenizer for Latin text; with Chinese, jieba words joined by
    spaces and no further tokenization."""
    import sacrebleu

    if not predictions:
        return 0.0
    if any(has_cjk(t) for t in (*predictions, *references)):
        hyps = [' '.join(segment(p)) for p in predictions]
        refs = [' '.join(segment(r)) for r in references]
        return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize='none').score)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def sentence_bleu(prediction: str, reference: str) -> float:
    import sacrebleu

    if has_cjk(prediction) or has_cjk(reference):
        return float(sacrebleu.sentence_bleu(' '.join(segment(prediction)), [' '.join(segment(reference))],
                                             tokenize='none').score)
    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


_SCORERS: dict = {}


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (0-1) with rouge-score: its own tokenizer for Latin text, jieba words for Chinese."""
    from rouge_score import rouge_scorer

    kind = 'zh' if has_cjk(prediction) or has_cjk(reference) else 'en'
    if kind not in _SCORERS:
        _SCORERS[kind] = rouge_scorer.RougeScorer(['rougeL'], tokenizer=JiebaTokenizer() if kind == 'zh' else None)
    return float(_SCORERS[kind].score(reference, prediction)['rougeL'].fmeasure)
