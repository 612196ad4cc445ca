"""Pydantic models for the curate stage (part of the recipe).

Every model forbids unknown keys so that a typo in a recipe fails with the field's name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IntRange = Union[int, tuple[int, int]]


def as_range(value: IntRange) -> tuple[int, int]:
    """`3` -> (3, 3); `[1, 3]` -> (1, 3)."""
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _check_range(value: IntRange, lo_min: int, what: str) -> IntRange:
    lo, hi = as_range(value)
    if lo < lo_min or hi < lo:
        raise ValueError(f"{what} must be >= {lo_min} with lo <= hi, got {value!r}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldMap(_Strict):
    """Where each row field lives in a record. Dotted names reach into nested objects ("a.b").

    `meta` is either one column holding an object (dict or JSON string) or a list of columns
    gathered into an object keyed by the column's last name part. `task` optionally names a
    column that overrides the source's reward name per row.
    """

    prompt: str = Field("prompt", description="record field (dotted path) holding the prompt")
    answer: str = Field("answer", description="record field holding the reference answer")
    system: str | None = Field(None, description="record field holding a system message; null: none")
    meta: str | list[str] | None = Field(None, description="field (object) or list of fields kept as row metadata")
    task: str | None = Field(None, description="field naming the reward per row (overrides the source's task)")
    answer_format: Literal["plain", "gsm8k", "boxed"] = Field(
        "plain", description="plain: the field is the answer; gsm8k: the text after the last '####'; "
        "boxed: the content of the last \\boxed{}")


class _SourceBase(_Strict):
    name: str = Field(min_length=1, description="source name (row ids, manifests, per-source counts)")
    weight: float = Field(default=1.0, gt=0, description="mixing weight, used when total_rows is set")
    max_rows: int | None = Field(default=None, ge=0, description="cap on this source's rows after filtering")


class ArithmeticSource(_SourceBase):
    type: Literal["arithmetic"] = Field("arithmetic", description="source kind")
    n: int = Field(ge=1, description="prompts to generate")
    digits: IntRange = Field(2, description="digits per operand (a number or [min, max])")
    operators: list[Literal["+", "-", "*", "/"]] = Field(
        default_factory=lambda: ["+", "-"], min_length=1, description="operators to draw from")
    num_ops: IntRange = Field(1, description="operators per expression (a number or [min, max])")
    seed: int = Field(0, description="generator seed")
    allow_negative: bool = Field(True, description="allow negative intermediate and final results")
    template: str = Field(
        "What is {expr}? Give only the final number.", description="prompt text; {expr} is the expression")
    task: str = Field("numeric", description="reward function name (numeric: compare the final number)")

    @field_validator("digits")
    @classmethod
    def _digits(cls, v: IntRange) -> IntRange:
        _check_range(v, 1, "digits")
        if as_range(v)[1] > 9:
            raise ValueError("digits above 9 are not supported")
        return v

    @field_validator("num_ops")
    @classmethod
    def _num_ops(cls, v: IntRange) -> IntRange:
        return _check_range(v, 1, "num_ops")

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{expr}" not in v:
            raise ValueError("template must contain '{expr}'")
        return v


class CountdownSource(_SourceBase):
    type: Literal["countdown"] = Field("countdown", description="source kind")
    n: int = Field(ge=1, description="puzzles to generate")
    num_numbers: int = Field(default=4, ge=2, le=8, description="numbers given per puzzle")
    max_number: int = Field(default=100, ge=2, description="largest number given")
    target_range: tuple[int, int] = Field((10, 100), description="[min, max] of the target")
    seed: int = Field(0, description="generator seed")
    template: str = Field((
        "Using the numbers {numbers}, create an equation that equals {target}. "
        "You may use +, -, * and /, and each number exactly once. Give only the equation."
    ), description="prompt text; {numbers} and {target} are filled in")
    task: str = Field("countdown", description="reward function name (countdown: check the equation)")

    @field_validator("target_range")
    @classmethod
    def _target(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[1] < v[0]:
            raise ValueError(f"target_range must be [lo, hi] with 1 <= lo <= hi, got {list(v)}")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{numbers}" not in v or "{target}" not in v:
            raise ValueError("template must contain '{numbers}' and '{target}'")
        return v


class WordProblemSource(_SourceBase):
    """Multi-step word problems with integer answers (components/data/word_problems.py)."""

    type: Literal["word_problems"] = Field("word_problems", description="source kind")
    n: int = Field(ge=1, description="problems to generate")
    steps: IntRange = Field((2, 3), description="operations after the starting quantity (a number or [min, max])")
    digits: IntRange = Field((1, 2), description="digits of the starting quantity and of added/removed amounts")
    operations: list[Literal["+", "-", "*", "/"]] = Field(
        default_factory=lambda: ["+", "-", "*", "/"], min_length=1,
        description="operations drawn per step (* and / use 2..9; / only when exact)")
    themes: list[Literal["market", "savings", "warehouse", "library"]] = Field(
        default_factory=lambda: ["market", "savings", "warehouse", "library"], min_length=1,
        description="story templates drawn per problem")
    seed: int = Field(0, description="generator seed")
    template: str = Field("{problem} Give only the final number.", description="prompt text; {problem} is the story")
    task: str = Field("numeric", description="reward function name")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: IntRange) -> IntRange:
        return _check_range(v, 1, "steps")

    @field_validator("digits")
    @classmethod
    def _digits(cls, v: IntRange) -> IntRange:
        _check_range(v, 1, "digits")
        if as_range(v)[1] > 6:
            raise ValueError("digits above 6 are not supported")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{problem}" not in v:
            raise ValueError("template must contain '{problem}'")
        return v


# Field conventions of well-known datasets: `convention: gsm8k` reads `question` and the number
# after `####` in `answer`; `convention: math` reads `problem` and the last `\boxed{}` of `solution`.
CONVENTIONS: dict[str, dict[str, Any]] = {
    "gsm8k": {"prompt": "question", "answer": "answer", "answer_format": "gsm8k"},
    "math": {"prompt": "problem", "answer": "solution", "answer_format": "boxed"},
}


class _Conventional(_SourceBase):
    convention: Literal["gsm8k", "math"] | None = Field(
        None, description="dataset field convention (gsm8k, math); sets `fields`, which may still override it")

    @model_validator(mode="before")
    @classmethod
    def _apply_convention(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("convention") in CONVENTIONS:
            given = data.get("fields") or {}
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            data = {**data, "fields": {**CONVENTIONS[data["convention"]], **given}}
        return data


class _FileSource(_Conventional):
    path: str = Field(min_length=1, description="local path or fsspec URL such as s3://bucket/key")
    fields: FieldMap = Field(default_factory=FieldMap, description="which record fields hold prompt, answer, ...")
    task: str = Field("numeric", description="reward function name for every row")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")


class JsonlSource(_FileSource):
    type: Literal["jsonl"] = Field("jsonl", description="source kind")


class ParquetSource(_FileSource):
    type: Literal["parquet"] = Field("parquet", description="source kind")


class CsvSource(_FileSource):
    type: Literal["csv"] = Field("csv", description="source kind")
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="column separator")


class HfDiskSource(_Conventional):
    type: Literal["hf_disk"] = Field("hf_disk", description="source kind")
    path: str = Field(min_length=1, description="folder written by datasets' save_to_disk")
    split: str = Field("train", description="dataset split to read")
    fields: FieldMap = Field(default_factory=FieldMap, description="which record fields hold prompt, answer, ...")
    task: str = Field("numeric", description="reward function name for every row")


class HfHubSource(_Conventional):
    type: Literal["hf_hub"] = Field("hf_hub", description="source kind")
    dataset: str = Field(min_length=1, description="hub dataset id, e.g. openai/gsm8k")
    config_name: str | None = Field(None, description="dataset configuration name; null: the default")
    split: str = Field("train", description="dataset split to read")
    revision: str | None = Field(None, description="git revision of the dataset; null: main")
    fields: FieldMap = Field(default_factory=FieldMap, description="which record fields hold prompt, answer, ...")
    task: str = Field("numeric", description="reward function name for every row")


SourceConfig = Annotated[
    Union[ArithmeticSource, CountdownSource, WordProblemSource, JsonlSource, ParquetSource, CsvSource,
          HfDiskSource, HfHubSource],
    Field(discriminator="type"),
]


class DedupConfig(_Strict):
    """Exact and near-duplicate removal.

    Near duplicates use MinHash over *character* `shingle`-grams of the lower-cased prompt: word
    n-grams are too coarse for short prompts (one changed word in a 20-word prompt already drops
    word-5-gram Jaccard to ~0.6). LSH candidates are confirmed with the exact Jaccard of the
    shingle sets, and prompts whose numbers or answers differ are never merged (different
    problems). The default threshold comes from a measured sweep (README, "Near-duplicate
    threshold"): one-word paraphrases of short word problems have 5-shingle Jaccard 0.77-0.85.
    """

    exact: bool = Field(True, description="drop exact duplicates (normalised prompt)")
    near: bool = Field(True, description="drop near duplicates (MinHash LSH)")
    threshold: float = Field(default=0.7, gt=0.0, le=1.0, description="exact shingle Jaccard at which "
                             "two prompts are one (0.7: see the sweep in tests/bench/bench_dedup_threshold.py)")
    shingle: int = Field(default=5, ge=1, description="characters per shingle")
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations (more: more exact, slower)")
    max_chars: int = Field(default=4096, ge=16, description="near-dedup reads at most this many "
                           "characters of a prompt (memory bounded by rows, not by the longest row)")


class DecontamConfig(_Strict):
    """Word n-gram overlap between train prompts and eval prompts (eval split + eval_files).

    Prompts shorter than `ngram` words use their whole word sequence as their only n-gram, so
    short arithmetic prompts are matched as wholes (also when contained in a longer prompt).
    N-grams shared by `template_df` or more distinct prompts (train + eval) are template
    boilerplate and ignored, so a long shared template does not flag every templated prompt.
    `eval_files`: .jsonl/.json/.parquet/.csv (column prompt/question/problem/input) or .txt (one
    prompt per line), local or fsspec URLs.
    """

    ngram: int = Field(default=13, ge=1, description="words per n-gram compared with the eval prompts")
    template_df: int = Field(
        default=3, ge=0,
        description="n-grams shared by at least this many distinct prompts are template text, not evidence (0: off)",
    )
    eval_files: list[str] = Field(
        default_factory=list, description="extra eval sets to decontaminate against (.jsonl/.json/.parquet/.csv/.txt, local or URL)")


class FilterConfig(_Strict):
    min_prompt_tokens: int = Field(default=1, ge=0, description="drop prompts shorter than this (tokens)")
    max_prompt_tokens: int = Field(default=512, ge=1, description="drop prompts longer than this (tokens)")
    charset: Literal["any", "ascii", "latin"] = Field(
        "any", description="drop prompts with characters outside this set")

    @model_validator(mode="after")
    def _bounds(self) -> "FilterConfig":
        if self.min_prompt_tokens > self.max_prompt_tokens:
            raise ValueError("min_prompt_tokens must be <= max_prompt_tokens")
        return self


class CurateConfig(_Strict):
    sources: list[SourceConfig] = Field(min_length=1, description="where prompts come from (at least one)")
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, description="share of rows held out for evaluation")
    eval_max_rows: int | None = Field(default=None, ge=0, description="cap on held-out rows; null: no cap")
    seed: int = Field(0, description="split and mixing seed")
    total_rows: int | None = Field(
        default=None, ge=1, description="mix the sources by weight to this many training rows; null: keep all")
    shard_rows: int = Field(default=100_000, ge=1, description="max rows per parquet shard")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="duplicate removal")
    decontam: DecontamConfig = Field(
        default_factory=DecontamConfig, description="removal of training prompts that overlap eval prompts")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="length and character filters")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")

    @model_validator(mode="after")
    def _unique_names(self) -> "CurateConfig":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        return self
