"""VQA answer normalisation and the VQA soft accuracy.

Two normalisers, both built from the same steps as the official VQA evaluation
(``vqaEval.py`` of the VQA challenge):

* :func:`normalize_answer` -- what the official evaluator applies to a result
  answer: newlines/tabs to spaces, strip, :func:`process_punctuation`, then
  :func:`process_digit_article`.
* :func:`evalai_normalize` (also as :class:`EvalAIAnswerProcessor`) -- the
  EvalAI/MMF answer processor LLaVA uses to clean predictions before a VQAv2 or
  VizWiz submission and for TextVQA scoring: lowercase, drop ``,`` and ``?``,
  split off ``'s``, then the same two steps.

The tables (contractions, number words, articles, punctuation) are the
official ones, including their quirks (e.g. capitalised keys such as ``Im``
that can never match after lowercasing), so scores agree with the servers.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

# Contracted forms written without the apostrophe -> the canonical form.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# Only zero..ten are mapped; larger numbers are expected as digits already.
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# Periods are handled separately (PERIOD_STRIP); apostrophes and colons are kept.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_",
               "-", ">", "<", "@", "`", ",", "?", "!")

# A comma between two digits ("1,000") anywhere in the answer switches every
# punctuation mark from "replace by a space" to "delete", so 1,000 -> 1000.
COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")

# A period that is not followed by a digit is deleted, so "3.5" survives while
# "dog." and "a.m" lose theirs. The official pattern is written
# ``(?!<=\d)(\.)(?!\d)``; its first group is a (no-op) lookahead, not the
# lookbehind it looks like, so "not followed by a digit" is the whole rule.
PERIOD_STRIP = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (= 32) positionally into sub()'s
# ``count`` slot, so at most 32 periods are removed. Kept for identical scores.
_PERIOD_STRIP_COUNT = 32


def process_punctuation(text: str) -> str:
    """Official VQA punctuation handling (see the module constants for the rules)."""
    delete_all = COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The decision looks at the original text, each mark on its own: a mark
        # next to a space ("yes, it is") is deleted, one inside a word
        # ("hello-world") becomes a space.
        if delete_all or (mark + " " in text) or (" " + mark in text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The official VQA evaluator's normalisation of a result answer."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def evalai_normalize(text: str) -> str:
    """EvalAI / MMF answer processor (LLaVA's ``EvalAIAnswerProcessor``)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


class EvalAIAnswerProcessor:
    """Callable wrapper of :func:`evalai_normalize`, for code written against LLaVA's class."""

    def __call__(self, text: str) -> str:
        return evalai_normalize(text)


def vqa_accuracy(
    pred: str,
    gt_answers: Sequence[str],
    normalize: Callable[[str], str] | None = normalize_answer,
) -> float:
    """VQA soft accuracy of one prediction against the annotators' answers (0..1).

    For each annotator i, the prediction scores ``min(1, m_i / 3)`` where m_i is
    the number of the *other* annotators whose answer equals the prediction;
    the result is the mean over annotators. With 10 answers, a prediction that
    matches k of them scores 0.3, 0.6, 0.9, 1.0 for k = 1, 2, 3, >=4.

    ``normalize`` is applied to the prediction and to every answer (pass None if
    both are normalised already). The official evaluator assumes ground truth
    that was normalised when the dataset was built; normalising it again is a
    no-op for such answers and makes raw answer lists (TextVQA) work.
    """
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    if normalize is not None:
        pred = normalize(pred)
        gt_answers = [normalize(a) for a in gt_answers]
    matches = sum(1 for answer in gt_answers if answer == pred)
    # Leaving out annotator i leaves matches - 1 equal answers if i matched, else matches.
    total = 0.0
    for answer in gt_answers:
        others = matches - 1 if answer == pred else matches
        total += min(1.0, others / 3.0)
    return total / len(gt_answers)
