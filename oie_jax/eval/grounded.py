"""Grounded NER evaluation: a grounding model run over GMNER data, grounded prediction files read and paired
with gold tweets by image id, and the GMNER / MNER / EEG report (Markdown, JSON, chart).

Prediction files are JSON Lines, one tweet per line:

    {"id": "IMGID", "entities": [{"text": "Red Circle", "type": "PER", "box": [x1, y1, x2, y2] | null}, ...]}

with boxes in the original image's pixels (other keys are ignored).
"""

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np

from oie_jax.data import format as fmt
from oie_jax.data.entities import Entity, gold_entities
from oie_jax.data.format import Record
from oie_jax.data.grounding import image_id
from oie_jax.data.images import ImageSource
from oie_jax.data.proposals import Proposals
from oie_jax.errors import UserError, shown
from oie_jax.eval.gmner import GMNER_METRICS, GroundingScores, score
from oie_jax.eval.metrics import STATS
from oie_jax.eval.predictions import json_lines
from oie_jax.eval.report import output_path


def read_grounded_predictions(path) -> dict[str, list[Entity]]:
    """{image id: predicted entities}; anything else than the layout above is a UserError naming the file,
    line and field."""
    predictions: dict[str, list[Entity]] = {}
    for _, where, value, key in json_lines(path, '{"id": ..., "entities": [...]}'):
        if not isinstance(value.get("entities"), list):
            raise UserError(f"{where}: entities: expected a list")
        if key in predictions:
            raise UserError(f"{where}: id: {key!r} is predicted twice")
        entities = []
        for k, entity in enumerate(value["entities"]):
            field = f"{where}: entities[{k}]"
            if not isinstance(entity, dict) or not all(isinstance(entity.get(f), str) for f in ("text", "type")):
                raise UserError(f"{field}: expected {{\"text\": str, \"type\": str, \"box\": [4 numbers] or null}}")
            box = entity.get("box")
            if box is not None and not (isinstance(box, list) and len(box) == 4 and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
                raise UserError(f"{field}.box: expected [x1, y1, x2, y2] (numbers) or null, got {json.dumps(box)[:60]}")
            entities.append(Entity(entity["text"], entity["type"], () if box is None else (tuple(map(float, box)),)))
        predictions[key] = entities
    return predictions


def pair(golds: Sequence[Record], predictions: dict[str, list[Entity]]) -> tuple[list[list[Entity]], list[str]]:
    """Predicted entities per gold tweet (none for a tweet without a prediction) and notes on what did not
    pair: tweets without a prediction, predictions of ids the gold does not hold."""
    ids = [image_id(r) for r in golds]
    missing = [i for i in ids if i not in predictions]
    unknown = sorted(set(predictions) - set(ids))
    notes = []
    for what, found in (("gold tweets have no prediction (scored as predicting nothing)", missing),
                        ("predictions are for ids the gold does not hold (ignored)", unknown)):
        if found:
            notes.append(f"{len(found)} {what}: {shown(found)}")
    return [predictions.get(i, []) for i in ids], notes


def without_boxes(result):
    """A tweet's result whose image could not be read: every entity "not in the image"."""
    return dataclasses.replace(result, entities=tuple(dataclasses.replace(e, box=None) for e in result.entities))


def evaluate(grounder, records: Sequence[Record], images: ImageSource, batch_size: int = 8,
             max_new_tokens: int = 64, progress: bool = True, proposals: Proposals | None = None,
             gold_output: bool = False):
    """(grounded results, scores, notes) of a grounding model on GMNER records, with the user's
    `proposals` as candidates when given. A tweet whose image cannot be read is reported by `images` and
    its entities predicted "not in the image"; the proposals' problems are notes. With `gold_output`,
    the gold output stands for the LLaMA's, so the scores are the grounding's alone (no extraction errors)."""
    from oie_jax.data.packing import answer_tokens
    from oie_jax.infer.ground import ground

    results = []
    chunk = batch_size * 4
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="tweet", desc="grounding", dynamic_ncols=True)
    for first in range(0, len(records), chunk):
        part = records[first:first + chunk]
        loaded = [images.load(image_id(r)) for r in part]
        regions = None
        if proposals is not None:
            regions = [proposals.original(image_id(r), p.width, p.height) for r, (_, p, _) in zip(part, loaded)]
        outputs = [answer_tokens(r, grounder.tokenizer) for r in part] if gold_output else None
        found = ground(grounder, part, [image for image, _, _ in loaded], placements=[p for _, p, _ in loaded],
                       outputs=outputs, max_new_tokens=max_new_tokens, batch_size=batch_size, proposals=regions)
        results += [result if ok else without_boxes(result) for result, (_, _, ok) in zip(found, loaded)]
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    scores = score([gold_entities(r) for r in records], [[e.as_entity() for e in r.entities] for r in results])
    notes = [f"{len(images.problems)} images could not be read: {images.summary()}"] if images.problems else []
    if proposals is not None:
        notes += proposals.problems
    return results, scores, notes


def written_regions(tweet: str, output: str, width: int, height: int):
    """The GroundedResult of a `Grounded NER` output for an image of `width` x `height` pixels: its
    well-formed items, regions as boxes in those pixels."""
    from oie_jax.infer.ground import GroundedEntity, GroundedResult

    parsed = fmt.parse(output, fmt.GROUNDED_TASK)
    entities = tuple(GroundedEntity(text, label, fmt.region_box(region, width, height))
                     for label, text, region in parsed.items)
    return GroundedResult(tweet, output, entities, parsed.well_formed, parsed.reason)


def evaluate_generation(model, tokenizer, records: Sequence[Record], images: ImageSource, batch_size: int = 16,
                        max_new_tokens: int = 96, progress: bool = True, labels=None):
    """(grounded results, scores, notes) of a multimodal model that writes each entity's region itself
    (GMNER as generation: `Grounded NER` outputs, `fmt.render_region`), on GMNER records. Regions become
    boxes in the pixels of each tweet's image; malformed items are left out of the prediction and their
    outputs counted in the notes; a tweet whose image cannot be read is reported by `images` and its
    entities predicted "not in the image". `labels`: constrained decoding (`infer/constrain.py`)."""
    from oie_jax.data.entities import grounded_record
    from oie_jax.infer.predict import generate_outputs

    loaded = [images.load(image_id(r)) for r in records]
    outputs, stats = generate_outputs(model, tokenizer, [grounded_record(r) for r in records], batch_size,
                                      max_new_tokens, progress, labels, images=np.stack([i for i, _, _ in loaded]))
    results = []
    for record, output, (_, placement, ok) in zip(records, outputs, loaded):
        result = written_regions(image_id(record), output, placement.width, placement.height)
        results.append(result if ok else without_boxes(result))
    scores = score([gold_entities(r) for r in records], [[e.as_entity() for e in r.entities] for r in results])
    malformed = [r for r in results if not r.well_formed]
    notes = [stats.summary()]
    if malformed:
        notes.append(f"{len(malformed)} outputs are not well formed (their well-formed items are scored); first: "
                     f"{malformed[0].id}: {malformed[0].reason}")
    if images.problems:
        notes.append(f"{len(images.problems)} images could not be read: {images.summary()}")
    return results, scores, notes


def markdown(scores: GroundingScores, title: str, notes: Sequence[str] = (),
             slices: dict[str, GroundingScores] | None = None) -> str:
    lines = [f"# {title}", "", "| metric | P | R | F1 | TP | predicted | gold |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m, name in enumerate(GMNER_METRICS):
        p, r, f1 = (100 * scores.prf[m, s] for s in range(len(STATS)))
        tp, predicted, gold = scores.counts[m]
        lines.append(f"| {name.upper()} | {p:.2f} | {r:.2f} | {f1:.2f} | {tp} | {predicted} | {gold} |")
    lines += ["", "GMNER: span, type and region right; MNER: span and type; EEG: span and region. A region is "
              "right when IoU > 0.5 with a gold box of the entity, or both say not in the image (docs/metrics.md)."]
    if slices:
        lines += ["", "## By type and by region (P / R / F1 in %)", "",
                  "| slice | gold | predicted | " + " | ".join(m.upper() for m in GMNER_METRICS) + " |",
                  "|---|---:|---:|" + "---|" * len(GMNER_METRICS)]
        for name, part in slices.items():
            cells = [" / ".join(f"{100 * v:.1f}" for v in part.prf[m]) for m in range(len(GMNER_METRICS))]
            lines.append(f"| {name} | {part.counts[0, 2]} | {part.counts[0, 1]} | " + " | ".join(cells) + " |")
        lines += ["", "Types compare ignoring case; a prediction counts as groundable as the gold entity of its "
                  "tweet with its text is, else as its own region says (docs/metrics.md)."]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def to_json(scores: GroundingScores, notes: Sequence[str] = (),
            slices: dict[str, GroundingScores] | None = None) -> dict:
    def entry(part: GroundingScores) -> dict:
        return {"metrics": {name: round(value, 6) for name, value in part.metrics().items()},
                "counts": part.counts_by_name()}

    return {**entry(scores), "slices": {name: entry(part) for name, part in (slices or {}).items()},
            "notes": list(notes)}


def plot(scores: GroundingScores, path, title: str, slices: dict[str, GroundingScores] | None = None) -> None:
    """P/R/F1 of the three metrics; with `slices`, a second panel of their F1 per slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2 if slices else 1, figsize=(12 if slices else 6, 3.5), squeeze=False)
    ax = axes[0, 0]
    width = 0.26
    for s, stat in enumerate(STATS):
        ax.bar(np.arange(len(GMNER_METRICS)) + (s - 1) * width, 100 * scores.prf[:, s], width, label=stat.upper())
    ax.set_xticks(np.arange(len(GMNER_METRICS)), [m.upper() for m in GMNER_METRICS])
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    if slices:
        by_slice, names = axes[0, 1], list(slices)
        for m, metric in enumerate(GMNER_METRICS):
            by_slice.bar(np.arange(len(names)) + (m - 1) * width, [100 * slices[n].prf[m, 2] for n in names], width,
                         label=f"{metric.upper()} F1")
        by_slice.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize="small")
        by_slice.set_ylim(0, 100)
        by_slice.grid(axis="y", alpha=0.3)
        by_slice.legend(fontsize="small")
        by_slice.set_title("By type and by region")
    figure.tight_layout()
    with output_path(path).open("wb") as f:
        figure.savefig(f, format="png", dpi=120)
    plt.close(figure)


def write_reports(scores: GroundingScores, title: str, notes: Sequence[str] = (), markdown_path=None, json_path=None,
                  plot_path=None, slices: dict[str, GroundingScores] | None = None) -> list:
    written = []
    if markdown_path:
        output_path(markdown_path).write_text(markdown(scores, title, notes, slices), encoding="utf-8")
        written.append(markdown_path)
    if json_path:
        output_path(json_path).write_text(json.dumps(to_json(scores, notes, slices), indent=2, ensure_ascii=False)
                                          + "\n", encoding="utf-8")
        written.append(json_path)
    if plot_path:
        plot(scores, plot_path, title, slices)
        written.append(plot_path)
    return written
