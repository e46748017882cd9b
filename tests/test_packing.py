"""Sequences with a loss mask on the target only, truncation that never cuts a target, and packing."""

import numpy as np
import pytest

from oie_jax import cli
from oie_jax.data.format import render
from oie_jax.data.packing import EncodeStats, encode, pack, pad, place
from oie_jax.data.sample import DIRECTORY as SAMPLE_DIRECTORY
from oie_jax.data.sample import load_sample
from oie_jax.data.tokenizer import load_tokenizer
from oie_jax.models.attention import AttentionMask


@pytest.fixture(scope="module")
def tokenizer(smollm2_hf_dir):
    return load_tokenizer(smollm2_hf_dir)


def test_loss_mask_covers_exactly_the_output_and_eos(tokenizer):
    stats = EncodeStats()
    for record in load_sample():
        sequence = encode(record, tokenizer, 512, stats)
        target = sequence.tokens[sequence.loss_mask == 1]
        assert target[-1] == tokenizer.eos_id
        assert tokenizer.decode(target[:-1], skip_special_tokens=False) == render(record)[1]
        assert tokenizer.decode(sequence.tokens[sequence.loss_mask == 0]) == render(record)[0]
        assert sequence.loss_mask[: np.argmax(sequence.loss_mask)].sum() == 0  # target is one suffix
    assert stats.encoded == 210 and stats.prompts_cut == 0


def test_truncation_cuts_the_prompt_start_never_the_target(tokenizer):
    record = load_sample("train")[0]
    full = encode(record, tokenizer, 512, EncodeStats())
    target_length = int(full.loss_mask.sum())
    stats = EncodeStats()
    short = encode(record, tokenizer, target_length + 10, stats)
    assert len(short.tokens) == target_length + 10 and stats.prompts_cut == 1
    np.testing.assert_array_equal(short.tokens[-target_length:], full.tokens[-target_length:])
    np.testing.assert_array_equal(short.tokens[:10], full.tokens[len(full.tokens) - target_length - 10:-target_length])
    assert stats.prompt_tokens_cut == len(full.tokens) - len(short.tokens)
    assert encode(record, tokenizer, target_length, stats) is None
    assert stats.skipped == {"target longer than max_length": 1}


def test_a_record_whose_text_holds_the_image_placeholder_id_is_skipped_and_counted():
    from oie_jax.data.format import Record
    from oie_jax.data.tokenizer import ByteTokenizer

    tokenizer, stats = ByteTokenizer(), EncodeStats()
    placeholder = ord("#") + ByteTokenizer.OFFSET  # a byte's id stands for the image here
    records = [Record("Jordan wins", "NER", items=(("PER", "Jordan"),)), Record("#Jordan wins", "NER"),
               Record("Jordan wins", "NER", items=(("PER#", "Jordan"),))]
    encoded = [encode(r, tokenizer, 64, stats, placeholders=(placeholder, 4)) for r in records]
    assert encoded[1] is None and encoded[2] is None
    assert list(encoded[0].tokens[:5]) == [tokenizer.bos_id] + [placeholder] * 4
    assert stats.skipped == {"text holds the image placeholder id": 2} and stats.encoded == 1


def test_packed_rows_keep_sequences_apart(tokenizer):
    stats = EncodeStats()
    sequences = [encode(r, tokenizer, 256, stats) for r in load_sample()]
    rows = pack(sequences, 256, pad_id=tokenizer.pad_id)
    # Every sequence appears once, whole, with positions restarting at 0.
    found = []
    for r in range(len(rows.tokens)):
        for segment in range(1, rows.segment_ids[r].max() + 1):
            where = rows.segment_ids[r] == segment
            found.append(rows.tokens[r, where].tolist())
            np.testing.assert_array_equal(rows.positions[r, where], np.arange(where.sum()))
    assert sorted(found) == sorted(s.tokens.tolist() for s in sequences)
    assert rows.loss_mask.sum() == sum(s.loss_mask.sum() for s in sequences)
    # Through the model's own mask: no query attends to a key of another segment or to padding.
    slots = np.arange(256)
    mask = np.asarray(AttentionMask(rows.segment_ids, rows.segment_ids, slots, slots).dense())
    other = rows.segment_ids[:, :, None] != rows.segment_ids[:, None, :]
    assert not (mask & other).any() and not mask[rows.segment_ids == 0].any()
    assert rows.efficiency > 1.5 * pad(sequences, 256, pad_id=0).efficiency


def test_placing_longest_first_needs_fewer_rows_than_filling_in_order(tokenizer):
    # In order, 2 5 5 2 2 4 need three rows of 10 ([2 5 2] [5 2] [4]); longest first, two ([5 5] [4 2 2 2]).
    assert place([2, 5, 5, 2, 2, 4], 10) == [[1, 2], [0, 3, 4, 5]]
    assert place([2, 5, 5, 2, 2, 4], 10, most=2) == [[1, 2], [0, 5], [3, 4]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 65, rng.integers(1, 40)).tolist()
        most = int(rng.integers(1, 5)) if rng.random() < 0.5 else None
        rows = place(lengths, 64, most=most)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # each sequence once
        assert all(row == sorted(row) and sum(lengths[i] for i in row) <= 64 for row in rows)
        assert most is None or max(len(row) for row in rows) <= most
    # The sample's training sequences at 512 (make train's config): one row more than their tokens fill, 28
    # (in the order of an epoch, 29: a last batch of 4 holding one row of 156 tokens).
    lengths = [len(encode(r, tokenizer, 512, EncodeStats()).tokens) for r in load_sample("train")]
    assert len(place(lengths, 512)) <= -(-sum(lengths) // 512) + 1


def test_inspect_prints_packing_efficiency(smollm2_hf_dir, capsys):
    assert cli.main(["data", "inspect", str(SAMPLE_DIRECTORY), "--pack", "512", "--tokenizer",
                     str(smollm2_hf_dir)]) == 0
    out = capsys.readouterr().out
    assert "packing into rows of 512 tokens: 210 sequences" in out and "efficiency" in out
