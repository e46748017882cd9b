"""TFDS builder `mmm`: unified records prepared from a manual directory of any supported corpus.

The manual directory holds MMM release files, stockmark JSON, CoNLL/GMNER text or our unified JSON
lines; each file's split (train, dev, test) comes from its name; one directory holds one format.
Examples keep the text, the rendered `output` (which carries the items) and the metadata;
tokenization happens in the pipeline, so one prepared dataset serves every tokenizer
(docs/architecture.md has the measurement behind this choice).
"""

import collections
import sys
from pathlib import Path

import tensorflow_datasets as tfds

from oie_jax.data.format import LANGUAGES, SUBSET_TASKS, Record, parse, render
from oie_jax.data.sources import Problem, expand, split_from_name
from oie_jax.data.sources.registry import SOURCES, detect

TEXT_FIELDS = ("id", "language", "subset", "task", "label", "text", "output")  # items live in `output`


def config_name(subset: str) -> str:
    return subset.lower().replace(":", "_").replace("&", "")


class MmmConfig(tfds.core.BuilderConfig):
    """`languages`/`subsets` None keep every record, whatever its language or subset (CoNLL and
    GMNER records have no MMM subset)."""

    def __init__(self, *, languages=None, subsets=None, **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.languages, self.subsets = languages, subsets

    def keeps(self, record: Record) -> bool:
        return ((self.languages is None or record.language in self.languages)
                and (self.subsets is None or record.subset in self.subsets))


class Mmm(tfds.core.GeneratorBasedBuilder):
    """The MMM corpus (or any supported corpus) as unified text-to-text records."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the corpus files (MMM release JSON, stockmark ner.json, CoNLL or GMNER text, or unified JSON "
        "lines) in the manual directory; each file name must say its split (train, dev or test).")
    BUILDER_CONFIGS = [
        MmmConfig(name="all", description="every language and subset"),
        *[MmmConfig(name=lang, languages=(lang,), description=f"language {lang}") for lang in LANGUAGES],
        *[MmmConfig(name=config_name(s), subsets=(s,), description=f"subset {s}") for s in SUBSET_TASKS],
    ]

    def _info(self):
        features = tfds.features.FeaturesDict({name: tfds.features.Text() for name in TEXT_FIELDS})
        return self.dataset_info_from_configs(features=features, description=__doc__)

    def _split_generators(self, dl_manager):
        manual = Path(dl_manager.manual_dir)
        source = detect(str(manual))
        reader, suffixes = SOURCES[source]
        by_split = collections.defaultdict(list)
        for path in expand([str(manual)], suffixes):
            split = split_from_name(path)
            if not split:
                raise ValueError(f"{path}: the file name says no split (train, dev or test)")
            by_split[split].append(path)
        return {split: self._generate_examples(manual, paths, reader) for split, paths in sorted(by_split.items())}

    def _generate_examples(self, manual: Path, paths, reader):
        for path in paths:
            rejected, left_out = collections.Counter(), 0
            for index, value in enumerate(reader(path)):
                if isinstance(value, Problem):
                    rejected[value.reason] += 1
                    continue
                if not self.builder_config.keeps(value):
                    left_out += 1
                    continue
                example = {name: getattr(value, name) for name in TEXT_FIELDS if name != "output"}
                yield f"{path.relative_to(manual)}:{index}", {**example, "output": render(value)[1]}
            if rejected or left_out:
                print(f"{path}: rejected {dict(rejected)} (oie-jax data inspect lists them); {left_out} records of "
                      f"other languages or subsets than config {self.builder_config.name!r}", file=sys.stderr)


def load_records(builder: Mmm, split: str) -> list[Record]:
    """The records of a prepared split, items parsed back from the stored output."""
    records = []
    for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        value = {k: v.decode("utf-8") for k, v in example.items()}
        parsed = parse(value["output"], value["task"])
        records.append(Record(text=value["text"], task=value["task"], label=parsed.label, items=parsed.items,
                              id=value["id"], language=value["language"], subset=value["subset"]))
    return records


def prepare(manual_dir, data_dir, config: str = "all") -> Mmm:
    """Prepares (once) and returns the builder of `config` under `data_dir`."""
    builder = Mmm(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder
