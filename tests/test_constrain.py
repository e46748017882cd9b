"""Format-constrained decoding: the jitted token mask against a plain-Python prefix check (a regular
expression matched partially), and the base SmolLM2 answering in the format on the sample test records
(one of each task in each language)."""

import itertools
import random

import jax
import numpy as np
import pytest
import regex

from oie_jax.data import format as fmt
from oie_jax.data.labels import LabelSet, label_set_for, label_sets, model_label_sets, save_label_sets
from oie_jax.infer import constrain

CASES = [  # (text, task, label set)
    ("Marie Curie worked in Paris; she won: prizes.", "NER", LabelSet(("Science", ""), ("Person", "Location"))),
    ("東京タワーは港区にある。", "NER", LabelSet(None, None)),
    ("Soseki was born in Edo.", "Relation Extraction", LabelSet(("Literature",), ("born in", "born"))),
    ("Tanaka won the 2020 election in Tokyo.", "Event Extraction", LabelSet(None, ("Election", "Elect"))),
    ("Red Circle met Blue Star; 10 of them.", "Grounded NER", LabelSet(("",), ("PER", "LOC"))),
]


def entities(text: str) -> list[bytes]:
    """Every entity the constraint allows: substrings on character boundaries, not starting with a space,
    without ':' or ';'."""
    found = {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)}
    return sorted((e.encode() for e in found if not e[0].isspace() and ":" not in e and ";" not in e),
                  key=len, reverse=True)


def reference_pattern(text: str, task: str, labels: LabelSet) -> regex.Pattern:
    """The allowed outputs as a regular expression over bytes, written from the format's definition."""
    def choice(words, free):
        if words is None:
            return free
        return b"(?:" + b"|".join(regex.escape(w.encode()) for w in sorted(words, key=len, reverse=True)) + b")"

    text_label = choice(None if labels.text is None else [w for w in labels.text if "/" not in w], rb"[^/\n]*")
    label = choice(labels.items, rb"[^:;/\n]+")
    entity = b"(?:" + b"|".join(regex.escape(e) for e in entities(text)) + b")"
    head = text_label + b"/" + regex.escape(task.encode()) + b"/"
    kind = fmt.TASKS[task]
    if kind == "pairs":
        body = b"(?::" + label + b";" + entity + b")*"
    elif kind == "triples":
        body = b"(?:(?::" + entity + b";" + label + b";" + entity + b")+:)?"
    elif kind == "grounded":
        number = rb"(?:100|[1-9]?[0-9])"
        region = b"(?:none|" + b" ".join([number] * 4) + b")"
        body = b"(?::" + label + b";" + entity + b";" + region + b")*"
    else:
        body = b"(?:(?::" + label + b";" + entity + b"(?:;" + entity + b")*)+:)?"
    return regex.compile(head + body)


def vocabulary(rng: random.Random, pieces_from: list[str]) -> list[bytes]:
    """Single bytes, pieces of the texts, labels and markers (split anywhere, mid-character too), and a
    few long pieces; index 0 stands for end-of-sequence (no bytes)."""
    pieces = {bytes([b]) for b in range(256)}
    for source in filter(None, pieces_from):
        data = source.encode()
        for _ in range(60):
            i = rng.randrange(len(data))
            pieces.add(data[i:i + rng.randint(1, 6)])
    pieces |= {b"/NER/", b":Person;", b";born in;", b"Marie Curie worked in Paris", b"x" * 20, b";none", b" 100",
               b"00", b"10 20", b";1"}
    return [b""] + sorted(pieces)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_mask_allows_exactly_the_tokens_that_keep_a_valid_prefix(case):
    text, task, labels = CASES[case]
    rng = random.Random(case)
    auto = constrain.automaton(text, task, labels)
    pattern = reference_pattern(text, task, labels)
    pieces = vocabulary(rng, [text, f"/{task}/:;", *(labels.text or ()), *(labels.items or ())])
    trie = constrain.TokenTrie.of(pieces, len(pieces))
    eos = (0,)
    mask_of = jax.jit(lambda table, accept, state: constrain.allowed(table[None], accept[None], state[None],
                                                                     trie.arrays(), eos))
    table, accept = np.asarray(auto.table), np.asarray(auto.accept)
    checked = 0
    for _ in range(12):  # random walks: mostly allowed tokens, sometimes any token
        state, prefix = auto.start, b""
        for _ in range(40):
            mask, ends = (np.asarray(x[0]) for x in mask_of(table, accept, np.int32(state)))
            valid = pattern.fullmatch(prefix, partial=True) is not None
            expected = np.array([len(p) > 0 and valid and pattern.fullmatch(prefix + p, partial=True) is not None
                                 for p in pieces])
            complete = valid and pattern.fullmatch(prefix) is not None
            expected[0] = complete or not expected[1:].any()
            np.testing.assert_array_equal(mask, expected, err_msg=f"after {prefix!r}")
            checked += 1
            if complete and rng.random() < 0.1:
                break
            choices = np.flatnonzero(mask[1:]) + 1
            token = int(rng.choice(choices)) if len(choices) and rng.random() < 0.9 else rng.randrange(1, len(pieces))
            state, prefix = int(ends[token]), prefix + pieces[token]
            assert constrain.accepts_prefix(auto, prefix) == (pattern.fullmatch(prefix, partial=True) is not None)
    assert checked > 100


@pytest.mark.parametrize("case", range(len(CASES)))
def test_an_output_closes_within_any_budget_that_can_hold_one(case):
    """Random walks that never choose to stop (end-of-sequence only where nothing else is allowed), with the
    budget in the mask: at the budget's end every output is complete."""
    text, task, labels = CASES[case]
    rng = random.Random(100 + case)
    pieces = vocabulary(rng, [text, f"/{task}/:;", *(labels.text or ()), *(labels.items or ())])
    trie = constrain.TokenTrie.of(pieces, len(pieces))
    auto = constrain.finishing(constrain.automaton(text, task, labels), trie)
    pattern = reference_pattern(text, task, labels)
    needed = int(auto.finish[auto.start])
    assert 1 <= needed <= constrain.shortest_ways(auto)[0][auto.start]  # every byte is a token here
    table, accept, finish = (np.asarray(x)[None] for x in (auto.table, auto.accept, auto.finish))
    mask_of = jax.jit(lambda state, left: constrain.allowed(table, accept, state[None], trie.arrays(), (0,),
                                                            finish, left))
    for budget in sorted({needed, needed + 1, needed + 2, 12, 20, 33}):
        for _ in range(3):
            state, prefix = auto.start, b""
            for left in range(budget, 0, -1):
                mask, ends = (np.asarray(x[0]) for x in mask_of(np.int32(state), np.int32(left)))
                choices = np.flatnonzero(mask[1:]) + 1
                if not len(choices):
                    assert mask[0]
                    break
                token = int(rng.choice(choices))
                state, prefix = int(ends[token]), prefix + pieces[token]
            assert pattern.fullmatch(prefix) is not None, (budget, prefix)


def test_a_cut_output_ends_at_its_last_complete_item():
    auto = constrain.automaton("Marie Curie worked in Paris.", "NER", LabelSet(None, None))
    pieces = [b"", b"Science", b"/NER/", b":Person;", b"Marie", b" Curie", b":Loc", b"ation;"]
    assert constrain.complete_prefix(auto, [1, 2, 3, 4, 5, 6, 7], pieces, (0,)) == [1, 2, 3, 4, 5]
    assert constrain.complete_prefix(auto, [1, 2, 3, 4, 5, 0], pieces, (0,)) == [1, 2, 3, 4, 5, 0]
    assert constrain.complete_prefix(auto, [1, 2], pieces, (0,)) == [1, 2]  # "Science/NER/": no items
    assert constrain.complete_prefix(auto, [1], pieces, (0,)) == []


def test_label_sets_of_training_data_round_trip_and_prefer_the_records_language(tmp_path):
    from oie_jax.data.format import Record

    records = [Record("a", "NER", "Sport", (("Person", "a"),), language="en"),
               Record("b", "NER", "体育", (("人名", "b"),), language="zh"),
               Record("c d", "Relation Extraction", "", (("c", "near", "d"),), language="en")]
    sets = label_sets(records)
    assert label_set_for(sets, "NER", "zh") == LabelSet(("体育",), ("人名",))
    assert label_set_for(sets, "NER", "ja") == LabelSet(("Sport", "体育"), ("Person", "人名"))
    assert label_set_for(sets, "Relation Extraction", "en").items == ("near",)
    assert label_set_for(sets, "Event Extraction") == LabelSet()
    save_label_sets(sets, tmp_path)
    assert model_label_sets(tmp_path) == sets


SAMPLE = fmt.__file__.rsplit("/", 1)[0] + "/sample/"


def spread(records, count: int) -> list:
    """`count` of the records, one of each (task, language) before a second of any: with `count` at least
    the number of pairs, every task in every language."""
    groups: dict = {}
    for record in records:
        groups.setdefault((record.task, record.language), []).append(record)
    rounds = itertools.zip_longest(*(groups[key] for key in sorted(groups)))
    return [record for round_ in rounds for record in round_ if record is not None][:count]


def test_the_base_smollm2_answers_in_the_format_with_entities_from_its_input(smollm2_dir):
    from oie_jax.data.sources.registry import load_source
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.infer.predict import generate_outputs
    from oie_jax.models.checkpoint import load_model

    train, test = (load_source([SAMPLE + f"{split}.jsonl"])[1].records for split in ("train", "test"))
    test = spread(test, 21)  # each of the 7 tasks in each of the 3 languages once: one batch
    assert len({(r.task, r.language) for r in test}) == 21
    model, tokenizer = load_model(smollm2_dir), load_tokenizer(smollm2_dir)
    free, _ = generate_outputs(model, tokenizer, test, batch_size=32, max_new_tokens=32, progress=False)
    outputs, _ = generate_outputs(model, tokenizer, test, batch_size=32, max_new_tokens=32, progress=False,
                                  labels=label_sets(train))
    assert sum(fmt.parse(o, r.task).well_formed for r, o in zip(test, free)) < len(test) // 2  # it cannot alone
    sets = label_sets(train)
    for record, output in zip(test, outputs):
        parsed = fmt.parse(output, record.task)
        assert parsed.well_formed, (record.text, output)
        labels = label_set_for(sets, record.task, record.language)
        assert parsed.label in labels.text
        position = 1 if fmt.TASKS[record.task] == "triples" else 0
        for item in parsed.items:
            assert item[position] in labels.items
            assert all(value in record.text for value in fmt.text_values(record.task, item)), (record.text, output)


def budget_outputs(model_dir, budgets, records=16) -> dict:
    """Constrained outputs of `records` sample test records (`spread`), without label sets and with the
    training data's, at each budget: {(labelled, budget): [(record, output)]}. One batch holds every
    (labelled, budget, record) row, each decoded to its own budget (one compiled program, not one per
    budget and label setting: a row decodes in a batch as alone, test_rows_with_their_own_budgets_...)."""
    import dataclasses

    from oie_jax.data.sources.registry import load_source
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.infer import generate as gen
    from oie_jax.infer.predict import prompt_tokens, record_constraints
    from oie_jax.models.checkpoint import load_model

    train, test = (load_source([SAMPLE + f"{split}.jsonl"])[1].records for split in ("train", "test"))
    test = spread(test, records)
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    settings = [(labelled, budget) for labelled in (False, True) for budget in budgets]
    by_setting = {labelled: record_constraints(test, tokenizer, label_sets(train) if labelled else {},
                                               model.cfg.vocab_size) for labelled in (False, True)}
    constraints = dataclasses.replace(by_setting[False], automata=[
        automaton for labelled, _ in settings for automaton in by_setting[labelled].automata])
    prompts = prompt_tokens(test, tokenizer) * len(settings)
    row_budgets = [budget for _, budget in settings for _ in test]
    outputs = gen.generate(model, prompts, row_budgets, eos_ids=gen.stop_ids(model.cfg, tokenizer),
                           batch_size=len(prompts), constraints=constraints)
    assert all(len(tokens) <= budget for tokens, budget in zip(outputs, row_budgets))
    texts = iter(tokenizer.decode(tokens, skip_special_tokens=True) for tokens in outputs)
    return {setting: [(record, next(texts)) for record in test] for setting in settings}


def assert_every_output_parses(results, budget_for_all=32):
    """Every output parses where its record's shortest complete output fits the budget, and from
    `budget_for_all` tokens on, that is every record."""
    for (labelled, budget), pairs in results.items():
        for record, output in pairs:
            if fmt.parse(output, record.task).well_formed:
                continue
            assert output == "" and budget < budget_for_all, (labelled, budget, record.text, output)


def test_constrained_outputs_of_a_random_model_parse_at_every_budget(tiny_smollm2_dir, capfd):
    from oie_jax.data.sources.registry import load_source
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.infer.predict import generate_outputs
    from oie_jax.models.checkpoint import load_model

    results = budget_outputs(tiny_smollm2_dir, (8, 32, 96))  # too short for some, enough for all, long
    assert_every_output_parses(results)
    lengths = [len(output) for pairs in results.values() for _, output in pairs]
    assert max(lengths) > 100  # it does talk on until the budget ends
    # What eval runs at the short budget: the same outputs, and it says that some cannot close.
    records = [record for record, _ in results[True, 8]]
    outputs, _ = generate_outputs(load_model(tiny_smollm2_dir), load_tokenizer(tiny_smollm2_dir), records,
                                  max_new_tokens=8, progress=False,
                                  labels=label_sets(load_source([SAMPLE + "train.jsonl"])[1].records))
    assert "shortest complete output" in capfd.readouterr().err
    assert outputs == [output for _, output in results[True, 8]]


def test_constrained_outputs_of_the_base_model_parse_at_every_budget(smollm2_dir):
    assert_every_output_parses(budget_outputs(smollm2_dir, (8, 32), records=8))


def test_rows_with_their_own_budgets_in_one_batch_answer_as_each_alone(tiny_smollm2_dir):
    """The server batches `oie` requests with different max_tokens: each row closes within its own."""
    import dataclasses

    from oie_jax.data.sources.registry import load_source
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.infer import generate as gen
    from oie_jax.infer.predict import prompt_tokens, record_constraints
    from oie_jax.models.checkpoint import load_model

    records = spread(load_source([SAMPLE + "test.jsonl"])[1].records, 4)
    model, tokenizer = load_model(tiny_smollm2_dir), load_tokenizer(tiny_smollm2_dir)
    prompts, eos_ids = prompt_tokens(records, tokenizer), gen.stop_ids(model.cfg, tokenizer)
    constraints = record_constraints(records, tokenizer, {}, model.cfg.vocab_size)
    budgets = [20, 32, 24, 17]  # one room of 32
    together = gen.generate(model, prompts, budgets, eos_ids=eos_ids, constraints=constraints)
    for i, (record, budget) in enumerate(zip(records, budgets)):
        alone = gen.generate(model, [prompts[i]], budget, eos_ids=eos_ids,
                             constraints=dataclasses.replace(constraints, automata=[constraints.automata[i]]))[0]
        assert together[i] == alone and len(alone) <= budget
        assert fmt.parse(tokenizer.decode(alone, skip_special_tokens=True), record.task).well_formed
