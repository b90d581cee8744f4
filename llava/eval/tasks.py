"""The benchmarks, declared once: files, question format, entry point, scorer and headline metric.

One :class:`Benchmark` entry per benchmark in :data:`BENCHMARKS` (as lmms-eval declares a task in one YAML file):
the runner (:mod:`llava.eval.run_benchmark`) reads from it what to answer, with which entry point and flags, how to
score and which metric to print as the headline. The scorers themselves (:mod:`llava.eval.scoring`) are plain
modules with their own command lines and know nothing of this table.

Paths are relative to the benchmark's folder ``<data root>/<folder>`` (data root default
``./playground/data/eval``, upstream LLaVA's layout of its ``eval.zip``). In scorer arguments
``{run}`` stands for ``<ckpt>/<method>/n_<tokens>``, so uploads and reports of different
checkpoints, methods and budgets never overwrite each other.

Everything else (which checkpoint, budget and method, chunks over GPUs, merging, where the
answers go: ``answers/<ckpt>/<method>/n_<tokens>.jsonl``) belongs to the runner,
:mod:`llava.eval.run_benchmark`. See EVAL.md for what to download for each benchmark.

``<method>`` in paths is the method's name plus one ``_<tag><value>`` per method parameter set to
a non-default value (:data:`METHOD_PARAMETERS`): ``fastv`` for FastV with K = 2, ``fastv_k3`` for
``--fastv-layer 3``, so runs with different parameters never share (or resume) one answers file.
"""

from __future__ import annotations

from dataclasses import dataclass

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    name:            CLI name (``--benchmark``) and script name.
    folder:          directory under the data root.
    question_file:   the questions the entry point reads.
    image_folder:    images referenced by the question file (None: images inline / not needed).
    video_folder:    videos referenced by the question file (video benchmarks; given as ``--video-folder``).
    answer_file:     ground-truth answers the entry point copies into each answers line (video benchmarks; given
                     as ``--gt-file-answers``, and to the scorer as ``--annotation-file``).
    entry:           module under ``llava.eval`` that answers the questions.
    prompt:          how a question is put to the model (documentation; LLaVA's question files
                     already carry their answer-format instruction, ``entry_args`` add the rest).
    scorer:          module under ``llava.eval.scoring`` (scorer or submission converter).
    headline:        "/"-separated path of the headline metric in the scorer's metrics; None where the number
                     comes from an evaluation server or grader (the scorer writes the upload file).
    entry_args:      fixed flags of the entry point.
    conv_mode:       conversation template.
    scorer_args:     (flag, path) pairs; paths relative to the folder, ``{run}`` expanded.
    optional_args:   (flag, path) pairs passed only when the path exists.
    outputs:         (path, what it is for): files the scorer writes besides the metrics.
    scorer_flags:    flags of the scorer's own command line that the runner routes to it rather than to the entry
                     point (the judge's endpoint: ``--api-base``, ``--judge-model``, ...).
    missing_as_wrong: whether the headline counts an unanswered question as wrong (as the official scorer does,
                     or would for an incomplete run); False where it is left out of the mean (TextVQA, POPE), so
                     the number is over the answered questions only and the runner marks it partial.
    """

    name: str
    folder: str
    question_file: str
    image_folder: str | None
    entry: str
    prompt: str
    scorer: str
    headline: str | None
    entry_args: tuple[str, ...] = ()
    conv_mode: str = "vicuna_v1"
    scorer_args: tuple[tuple[str, str], ...] = ()
    optional_args: tuple[tuple[str, str], ...] = ()
    outputs: tuple[tuple[str, str], ...] = ()
    missing_as_wrong: bool = True
    video_folder: str | None = None
    answer_file: str | None = None
    scorer_flags: tuple[str, ...] = ()

    def headline_value(self, metrics: dict) -> float | None:
        """The headline number in the scorer's metrics; None for upload-only benchmarks and where the metrics
        hold no score (e.g. an MMBench test split, which has no answers to score against)."""
        if self.headline is None:
            return None
        value = metrics
        for part in self.headline.split("/"):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value if isinstance(value, (int, float)) else None


# The four video-QA sets of Video-LLaVA (PKU-YuanGroup/Video-LLaVA, TRAIN_AND_VALIDATE.md and
# scripts/v1_5/eval/run_qa_*.sh): the Video-ChatGPT zero-shot QA files, one folder each under
# <data root>/GPT_Zero_Shot_QA, with test_q.json (video_name, question, question_id), test_a.json (answer,
# question_id) and the videos; upstream tries the extensions .mp4 .avi .mov .mkv in that order, and ActivityNet's
# files are named v_<video_name> (run_inference_video_qa_act.py). Answered as videollava/eval/video/
# run_inference_video_qa.py does (8 frames, conv llava_v1, greedy, up to 1024 new tokens), judged by a chat model
# (videollava/eval/video/eval_video_qa.py: yes/no and a 0-5 score); headline: the judge's accuracy.
VIDEO_PROMPT = "<video>\\n<question> (conv llava_v1, no answer-format instruction)"
# the judge's flags (llava.eval.scoring.video_qa) a script may add; not --num-workers / --temperature, which the
# entry point has too
JUDGE_FLAGS = ("--api-base", "--judge-model", "--api-key-env", "--max-retries", "--parse-retries", "--retry-delay",
               "--timeout")
VIDEO_BENCHMARKS = tuple(Benchmark(
    name=name, folder=f"GPT_Zero_Shot_QA/{folder}",
    question_file="test_q.json", image_folder=None, video_folder=videos, answer_file="test_a.json",
    entry="model_video_qa", prompt=VIDEO_PROMPT, entry_args=entry_args, conv_mode="llava_v1",
    scorer="video_qa", headline="accuracy", scorer_flags=JUDGE_FLAGS,
    scorer_args=(("--annotation-file", "test_a.json"), ("--question-file", "test_q.json")),
) for name, folder, videos, entry_args in (
    ("msvd", "MSVD_Zero_Shot_QA", "videos", ()),
    ("msrvtt", "MSRVTT_Zero_Shot_QA", "videos/all", ()),
    ("tgif", "TGIF_Zero_Shot_QA", "mp4", ()),
    ("activitynet", "Activitynet_Zero_Shot_QA", "all_test", ("--video-prefix", "v_")),
))


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark(
        name="vqav2", folder="vqav2",
        question_file="llava_vqav2_mscoco_test-dev2015.jsonl", image_folder="test2015",
        entry="model_vqa_loader", prompt=f"<question>\\n{SHORT_ANSWER}",
        scorer="vqav2", headline=None,
        scorer_args=(("--test-split", "llava_vqav2_mscoco_test2015.jsonl"),
                     ("--question-file", "llava_vqav2_mscoco_test-dev2015.jsonl"),
                     ("--upload-file", "answers_upload/{run}.json")),
        outputs=(("answers_upload/{run}.json", "upload to the EvalAI VQAv2 test-dev phase"),),
    ),
    Benchmark(
        name="gqa", folder="gqa",
        question_file="llava_gqa_testdev_balanced.jsonl", image_folder="data/images",
        entry="model_vqa_loader", prompt=f"<question>\\n{SHORT_ANSWER}",
        scorer="gqa", headline="accuracy",
        scorer_args=(("--question-file", "data/testdev_balanced_questions.json"),
                     ("--predictions-file", "data/{run}/testdev_balanced_predictions.json")),
        outputs=(("data/{run}/testdev_balanced_predictions.json", "for GQA's own eval.py"),),
    ),
    Benchmark(
        name="vizwiz", folder="vizwiz",
        question_file="llava_test.jsonl", image_folder="test",
        entry="model_vqa_loader",
        prompt=("<question>\\nWhen the provided information is insufficient, respond with 'Unanswerable'.\\n"
                f"{SHORT_ANSWER}"),
        scorer="vizwiz", headline=None,
        scorer_args=(("--test-split", "llava_test.jsonl"), ("--upload-file", "answers_upload/{run}.json")),
        outputs=(("answers_upload/{run}.json", "upload to the EvalAI VizWiz-VQA test phase"),),
    ),
    Benchmark(
        name="sqa", folder="scienceqa",
        question_file="llava_test_CQM-A.json", image_folder="images/test",
        entry="model_vqa_science", prompt=f"<context, question, options (A) ..>\\n{LETTER_ANSWER}",
        entry_args=("--single-pred-prompt",),
        scorer="sqa", headline="img_accuracy", scorer_args=(("--base-dir", "."),),
    ),
    Benchmark(
        name="textvqa", folder="textvqa",
        question_file="llava_textvqa_val_v051_ocr.jsonl", image_folder="train_images",
        entry="model_vqa_loader", prompt=f"<question>\\nReference OCR token: <tokens>\\n{SHORT_ANSWER}",
        scorer="textvqa", headline="accuracy", missing_as_wrong=False,
        scorer_args=(("--annotation-file", "TextVQA_0.5.1_val.json"),),
    ),
    Benchmark(
        name="pope", folder="pope",
        question_file="llava_pope_test.jsonl", image_folder="val2014",
        entry="model_vqa_loader", prompt=f"<question>\\n{SHORT_ANSWER}",
        scorer="pope", headline="average/f1", missing_as_wrong=False,
        scorer_args=(("--annotation-dir", "coco"), ("--question-file", "llava_pope_test.jsonl")),
    ),
    Benchmark(
        name="mme", folder="MME",
        question_file="llava_mme.jsonl", image_folder="MME_Benchmark_release_version",
        entry="model_vqa_loader", prompt=f"<question> Please answer yes or no.\\n{SHORT_ANSWER}",
        scorer="mme", headline="perception/total",
        scorer_args=(("--mme-dir", "MME_Benchmark_release_version"), ("--question-file", "llava_mme.jsonl"),
                     ("--eval-tool-dir", "eval_tool/answers/{run}")),
        outputs=(("eval_tool/answers/{run}/<subtask>.txt", "the layout of MME's eval_tool/calculation.py"),),
    ),
    Benchmark(
        name="mmbench", folder="mmbench",
        question_file="mmbench_dev_20230712.tsv", image_folder=None,
        entry="model_vqa_mmbench", prompt=f"<hint>\\n<question>\\nA. ..\\nB. ..\\n{LETTER_ANSWER}",
        entry_args=("--single-pred-prompt",),
        scorer="mmbench", headline="accuracy",
        scorer_args=(("--annotation-file", "mmbench_dev_20230712.tsv"),
                     ("--upload-file", "answers_upload/{run}.xlsx")),
        outputs=(("answers_upload/{run}.xlsx", "upload to the OpenCompass MMBench server"),),
    ),
    Benchmark(
        name="mmbench_cn", folder="mmbench_cn",
        question_file="mmbench_dev_cn_20231003.tsv", image_folder=None,
        entry="model_vqa_mmbench", prompt="<hint>\\n<question>\\nA. ..\\nB. ..\\n请直接回答选项字母。",
        entry_args=("--lang", "cn", "--single-pred-prompt"),
        scorer="mmbench", headline="accuracy",
        scorer_args=(("--annotation-file", "mmbench_dev_cn_20231003.tsv"),
                     ("--upload-file", "answers_upload/{run}.xlsx")),
        outputs=(("answers_upload/{run}.xlsx", "upload to the OpenCompass MMBench server"),),
    ),
    Benchmark(
        name="mmvet", folder="mm-vet",
        question_file="llava-mm-vet.jsonl", image_folder="images",
        entry="model_vqa", prompt="<question> (free-form answer, no instruction)",
        scorer="mmvet", headline=None, scorer_args=(("--upload-file", "results/{run}.json"),),
        optional_args=(("--annotation-file", "mm-vet.json"),),
        outputs=(("results/{run}.json", "grade with MM-Vet's GPT-4 grader"),),
    ),
    # The tiny real LLaVA (llava/model/tiny_real.py) on easy-vqa's test split; files written by
    # scripts/tiny/export_easyvqa.py. easyvqa_500: a fixed subset (500 questions drawn with seed 0) for CPU sweeps.
    *(Benchmark(
        name=name, folder=name,
        question_file=f"llava_{name}_test.jsonl", image_folder="../easyvqa/images",
        entry="model_vqa_loader", prompt="<question> (the conversation's system prompt asks for a single word)",
        entry_args=("--max_new_tokens", "8"), conv_mode="smollm2_short",
        scorer="easyvqa", headline="accuracy", scorer_args=(("--question-file", f"llava_{name}_test.jsonl"),),
    ) for name in ("easyvqa", "easyvqa_500")),
    *VIDEO_BENCHMARKS,
)}

# Defaults of the scripts under scripts/<family>/eval/.
FAMILY_CKPT = {"v1_5": "llava-v1.5-7b", "v1_6": "llava-v1.6-vicuna-7b", "video": "Video-LLaVA-7B-hf"}
FAMILY_HUB = {"v1_5": "liuhaotian", "v1_6": "liuhaotian", "video": "LanguageBind"}  # default --model-path owner
DEFAULT_DATA_ROOT = "./playground/data/eval"
DEFAULT_METHOD = "fastervlm"

# Entry-point flags that are parameters of a pruning method: (flag, tag in the method folder, default value, the
# methods that read it). The default is the one of llava.eval.run_llava.add_model_args (tests/test_eval_safety.py).
METHOD_PARAMETERS = (("--fastv-layer", "k", 2, ("fastv",)),)


def method_folder(method: str, values: dict[str, str | None]) -> str:
    """The method's folder name in output paths: ``method`` plus ``_<tag><value>`` for each of its parameters in
    ``values`` (flag -> value given, None when not given) that differs from its default; values must be integers."""
    name = method
    for flag, tag, default, methods in METHOD_PARAMETERS:
        value = values.get(flag)
        if value is None:
            continue
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{flag} {value!r}: must be an integer") from None
        if number != default and method in methods:  # a parameter the method does not read changes nothing
            name += f"_{tag}{number}"
    return name
