"""One translation run: every source record into every target language through the stages, answers
from the cache or the backend (bounded concurrency), then the release files, the review file and
the loss report. A record ends kept or rejected with a stage and reason; one whose request failed
is rejected for this run and asked again by the next (failures are never cached)."""

import asyncio
import dataclasses
import json

from etils import epath

from oie_jax.data.format import Record, render
from oie_jax.translate import filters
from oie_jax.translate.backends import Answer, RequestFailed, sampling
from oie_jax.translate.cache import AnswerCache, answer_key
from oie_jax.translate.calibration import merge_corrections, review_row, write_review
from oie_jax.translate.labels import LabelTables, UnknownLabel
from oie_jax.translate.prompt import Example, Translation, Unusable, build_prompt, entities_of, parse_answer
from oie_jax.translate.release import new_release, publish
from oie_jax.translate.report import loss_report, write_report

CACHE = "cache.sqlite"  # in OUT: every answer of the backend
DATA = "data"  # in OUT: the release-format files of the kept records
STAGES = ("labels", "answer", "untranslated", "alignment", "structure")
TRUNCATED_ASKS = 2  # a cut answer is asked once more, with twice the token budget
RELEASE_LANGUAGES = {"en": "En", "ja": "Jp", "zh": "Ch"}
RELEASE_SPLITS = {"train": "Train", "dev": "Dev", "test": "Test"}
RELEASE_SUBSETS = {"SCNM": "0_SCNM", "SCPOS:RW": "1_SCPOS_RW", "SCPOS:Adj&N": "2_SCPOS_Adj_N",
                   "SCPOS:Adj": "3_SCPOS_Adj", "SCPOS:N": "4_SCPOS_N", "TCREE": "5_TCREE"}


@dataclasses.dataclass(frozen=True)
class Source:
    key: int  # position in the input: names the record in the review file
    record: Record
    split: str  # train, dev, test (from its file name); '' = train


@dataclasses.dataclass(frozen=True)
class Outcome:
    source: Source
    target: str
    translated: Record | None  # labels and, once answered, text and entities in the target language
    rejection: filters.Rejection | None
    answer: str | None  # the LLM's raw answer
    how: str  # asked, cached, calibrated, or unasked (rejected before a request)

    @property
    def kept(self) -> bool:
        return self.rejection is None


def request_for(record: Record, target: str, tables: LabelTables,
                examples: dict[str, Example]) -> tuple[Record, tuple[str, ...], str] | UnknownLabel:
    """(the record with its labels translated, the entities to ask for, the prompt), or the label that
    no table translates."""
    labelled = tables.translate(record, target)
    if isinstance(labelled, UnknownLabel):
        return labelled
    entities = entities_of(record)
    return labelled, entities, build_prompt(Translation(record.text, entities), tables.source, target,
                                            examples[target])


def estimate(sources: list[Source], targets: list[str], tables: LabelTables, examples: dict[str, Example],
             tokenizer=None) -> dict:
    """What a run would ask: requests, prompt characters and (with a tokenizer) prompt tokens, per target."""
    per_target = {}
    for target in targets:
        counts = {"requests": 0, "unknown_labels": 0, "prompt_chars": 0, "prompt_tokens": None}
        prompts = []
        for source in sources:
            request = request_for(source.record, target, tables, examples)
            if isinstance(request, UnknownLabel):
                counts["unknown_labels"] += 1
            else:
                prompts.append(request[2])
        counts["requests"], counts["prompt_chars"] = len(prompts), sum(map(len, prompts))
        if tokenizer is not None and prompts:
            counts["prompt_tokens"] = sum(map(len, tokenizer.encode_batch(prompts, add_special_tokens=False)))
        per_target[target] = counts
    return per_target


class Translator:
    def __init__(self, backend, cache: AnswerCache, tables: LabelTables, examples: dict[str, Example],
                 calibrated: dict[tuple[int, str], Record] | None = None):
        self.backend, self.cache, self.tables, self.examples = backend, cache, tables, examples
        self.calibrated = calibrated or {}

    async def one(self, source: Source, target: str, limit: asyncio.Semaphore) -> Outcome:
        record = source.record
        if (fixed := self.calibrated.get((source.key, target))) is not None:  # a person's fix wins
            translation = Translation(fixed.text, entities_of(fixed))
            rejection = filters.check(record, fixed, translation, self.tables, target)
            if rejection is not None:
                rejection = dataclasses.replace(rejection, detail=f"calibrated: {rejection.detail}")
            return Outcome(source, target, fixed, rejection, None, "calibrated")
        request = request_for(record, target, self.tables, self.examples)
        if isinstance(request, UnknownLabel):
            return Outcome(source, target, None, filters.Rejection("labels", "unknown_label", str(request)), None,
                           "unasked")
        labelled, entities, prompt = request
        budget = self.backend.max_tokens
        for _ in range(TRUNCATED_ASKS):  # an answer the token budget cut is asked again with twice the budget
            try:
                answer, how = await self.answer(prompt, budget, limit)
            except RequestFailed as failed:
                return Outcome(source, target, labelled, filters.Rejection("answer", failed.reason, failed.detail),
                               None, "asked")
            if not answer.truncated:
                break
            budget *= 2
        else:
            return Outcome(source, target, labelled, filters.Rejection(
                "answer", "truncated", f"the answer reached max_tokens (asked with {budget // 2} at the end)"),
                answer.text, how)
        answer = answer.text
        translation = parse_answer(answer, len(entities))
        if isinstance(translation, Unusable):
            return Outcome(source, target, labelled, filters.Rejection("answer", "unusable_answer", translation.reason),
                           answer, how)
        translated = filters.assemble(labelled, entities, translation)
        return Outcome(source, target, translated, filters.check(record, translated, translation, self.tables, target),
                       answer, how)

    async def answer(self, prompt: str, max_tokens: int, limit: asyncio.Semaphore) -> tuple[Answer, str]:
        """(the answer, "cached" or "asked"); answers are cached as they come, failures never."""
        name, model, fields = self.backend.name, self.backend.served, sampling(max_tokens)
        key = answer_key(name, model, prompt, fields)
        answer = self.cache.get(key)
        if answer is not None:
            return answer, "cached"
        async with limit:
            answer = await self.backend.ask(prompt, max_tokens)
        self.cache.put(key, name, model, prompt, fields, answer)
        return answer, "asked"

    async def run(self, sources: list[Source], targets: list[str], progress=None) -> list[Outcome]:
        """Outcomes in input order, targets in the order given. `progress(outcome)` is called as each ends."""
        limit = asyncio.Semaphore(self.backend.concurrency)

        async def tracked(source, target):
            outcome = await self.one(source, target, limit)
            if progress is not None:
                progress(outcome)
            return outcome

        async with self.backend:
            return list(await asyncio.gather(*(tracked(s, t) for s in sources for t in targets)))


def to_review(outcome: Outcome) -> Record | None:
    """The translation side of a review row: what the pipeline had, with an empty text where no usable
    translation came (a row left so is skipped when merged, and the record is asked again)."""
    if outcome.translated is None or outcome.rejection.stage != "answer":
        return outcome.translated
    return dataclasses.replace(outcome.translated, text="")


def release_name(split: str, language: str, subset: str) -> str:
    """The MMM release's file name for a split, language and subset (`Train_En_0_SCNM_dataset.json`)."""
    split, code = RELEASE_SPLITS.get(split, "Train"), RELEASE_LANGUAGES.get(language, language.capitalize())
    if subset == "TCONER":
        return f"{split}_{code}_MRE_OIEDataset.json"
    return f"{split}_{code}_{RELEASE_SUBSETS.get(subset, subset)}_dataset.json"


def write_outputs(outcomes: list[Outcome], out: epath.Path) -> dict:
    """Release files of the kept records (in OUT/data, which `oie-jax data inspect` and training read),
    review.jsonl of the rejected ones, and the loss report, published together (translate/release.py);
    returns the report."""
    files: dict[str, list[dict]] = {}
    for outcome in outcomes:
        if outcome.kept:
            source, translated = outcome.source, outcome.translated
            name = release_name(source.split, translated.language, translated.subset)
            text_input, output = render(translated)
            files.setdefault(name, []).append({"id": translated.id, "input": text_input, "output": output})
    directory = new_release(out)
    data = directory / DATA
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob("*.json"):  # on a bucket: a file whose records are all rejected now
        stale.unlink()
    for name, rows in sorted(files.items()):
        (data / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    write_review([review_row(o.source.key, o.source.record, o.target, o.rejection, to_review(o), o.answer)
                  for o in outcomes if not o.kept], directory / "review.jsonl")
    report = loss_report(outcomes, STAGES, sorted(files))
    write_report(report, directory)
    publish(out, directory)
    return report


def translate(sources: list[Source], targets: list[str], backend, out, tables: LabelTables,
              examples: dict[str, Example], calibrated=None, progress: bool = True) -> dict:
    """Translates `sources` into `targets`, answers cached in OUT/cache.sqlite, with the fixes of
    OUT/corrections.jsonl and of `calibrated` (an edited review file, merged into it first); writes the
    outputs into `out` and returns the loss report."""
    from tqdm import tqdm

    out = epath.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    calibrated = merge_corrections(out, calibrated, [s.record for s in sources])
    cache = AnswerCache(out / CACHE)
    bar = tqdm(total=len(sources) * len(targets), unit="record", disable=not progress, dynamic_ncols=True)
    counts = {"kept": 0, "done": 0, "asked": 0}

    def advance(outcome: Outcome) -> None:
        counts["done"] += 1
        counts["kept"] += outcome.kept
        counts["asked"] += outcome.how == "asked"
        bar.update(1)
        bar.set_postfix(kept=f"{100 * counts['kept'] / counts['done']:.0f}%", asked=counts["asked"], refresh=False)

    try:
        translator = Translator(backend, cache, tables, examples, calibrated)
        outcomes = asyncio.run(translator.run(sources, targets, advance))
    finally:
        bar.close()
        cache.close()
    return write_outputs(outcomes, out)

