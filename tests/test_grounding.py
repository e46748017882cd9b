"""The grounding head: box arithmetic against torchvision, the H-Index target and loss against a plain-Python
reference, proposals pooled with RoIAlign, and the head learning to ground on a toy problem."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from torchvision.ops import box_iou, generalized_box_iou

from oie_jax.models import boxes as box_ops
from oie_jax.models.grounding import (
    Grounded,
    GroundingConfig,
    GroundingHead,
    choose,
    entity_queries,
    grounding_losses,
    responsible_cells,
    target_distribution,
)


def random_boxes(rng, n):
    corners = rng.uniform(0, 1, size=(n, 2, 2))
    return np.concatenate([corners.min(1), corners.max(1)], axis=-1).astype(np.float32)


def test_iou_and_generalized_iou_equal_torchvision():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 40), random_boxes(rng, 30)
    b[0] = a[0]  # the same box
    b[1] = [2, 2, 3, 3]  # far from all
    b[2] = a[1] * 0.5 + 0.25  # shrunk: often inside
    ours_iou = box_ops.iou(a[:, None], b[None])
    ours_giou = box_ops.generalized_iou(a[:, None], b[None])
    np.testing.assert_allclose(ours_iou, box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), atol=1e-6)
    np.testing.assert_allclose(ours_giou, generalized_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
                               atol=1e-6)
    assert np.asarray(ours_giou).min() < -0.2  # disjoint pairs were in the set
    # Without area: no overlap, and a finite gradient.
    point = jnp.array([0.3, 0.3, 0.3, 0.3])
    assert box_ops.iou(point, point) == 0
    assert np.isfinite(jax.grad(lambda p: box_ops.generalized_iou(p, point))(point)).all()


def reference_target(candidates, candidate_mask, gold, gold_mask, height, width, cells):
    """H-Index's target for one entity, by loops: IoU above 0.5 in proportion to IoU, the cell holding a
    gold box's centre with weight 1, all on "not in the image" without gold boxes."""
    golds = [box for box, real in zip(gold, gold_mask) if real]
    weights = [0.0] * (len(candidates) + 1)
    if not golds:
        weights[-1] = 1.0
        return weights
    for c, (box, real) in enumerate(zip(candidates, candidate_mask)):
        best = max(float(box_ops.iou(np.asarray(box), np.asarray(g))) for g in golds) if real else 0.0
        weights[c] = best if best > 0.5 else 0.0
    if cells:
        for x1, y1, x2, y2 in golds:
            column = min(max(math.floor((x1 + x2) / 2 * width), 0), width - 1)
            row = min(max(math.floor((y1 + y2) / 2 * height), 0), height - 1)
            weights[row * width + column] = 1.0
    total = sum(weights)
    return [w / total for w in weights]


def test_target_and_kl_equal_the_reference():
    height, width = 2, 3
    cells = np.array([[0.0, 0.0, 0.5, 1.0],  # IoU with [0, 0, 1, 1] exactly 0.5: not counted
                      [0.0, 0.0, 0.9, 1.0],  # 0.9: counted
                      [0.6, 0.0, 1.0, 0.5],
                      [0.0, 0.5, 0.3, 1.0],
                      [0.3, 0.5, 0.7, 1.0],
                      [0.7, 0.6, 1.0, 1.0]], np.float32)
    proposals = np.array([[0.0, 0.0, 1.0, 0.95], [0.7, 0.62, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]], np.float32)
    candidates = np.concatenate([cells, proposals])[None]
    candidate_mask = np.array([[True] * 8 + [False]])  # the last proposal is padding
    gold = np.zeros((1, 4, 2, 4), np.float32)
    gold_mask = np.zeros((1, 4, 2), bool)
    gold[0, 0, 0], gold_mask[0, 0, 0] = [0, 0, 1, 1], True  # one box
    gold[0, 1, :], gold_mask[0, 1, :] = [[0, 0, 1, 1], [0.7, 0.6, 1, 1]], True  # two boxes
    # entity 2: not in the image; entity 3: padding
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 4, 10)).astype(np.float32)
    out = Grounded(jnp.asarray(logits), jnp.asarray(candidates), jnp.asarray(candidate_mask))
    target = np.asarray(target_distribution(out, gold, gold_mask, (height, width), cells=True))
    for e in range(3):
        expected = reference_target(candidates[0], candidate_mask[0], gold[0, e], gold_mask[0, e], height, width, True)
        np.testing.assert_allclose(target[0, e], expected, atol=1e-6)
    assert target[0, 0, 0] == 0 and target[0, 0, 1] > 0 and target[0, 2, -1] == 1
    entity_mask = np.array([[1, 1, 1, 0]], np.float32)
    sums = grounding_losses(out, gold, gold_mask, entity_mask, (height, width), cells=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    kl = sum(t * (math.log(t) - lp) for e in range(3) for t, lp in zip(target[0, e], log_p[0, e]) if t > 0)
    np.testing.assert_allclose(float(sums.kl), kl, rtol=1e-5)
    assert float(sums.entities) == 3 and float(sums.boxes) == 3
    # Regression pairs each gold box with its responsible cell's box.
    owners = np.asarray(responsible_cells(jnp.asarray(gold[0, :2]), height, width))
    pairs = [(candidates[0, owners[e, k]], gold[0, e, k]) for e, k in [(0, 0), (1, 0), (1, 1)]]
    np.testing.assert_allclose(float(sums.l1), sum(np.abs(p - g).sum() for p, g in pairs), rtol=1e-5)
    predicted, golds = (torch.tensor(np.array(side)) for side in zip(*pairs))
    giou = generalized_box_iou(predicted, golds)
    np.testing.assert_allclose(float(sums.giou), float((1 - giou.diagonal()).sum()), rtol=1e-5)


def test_entity_queries_mean_and_last_of_each_span():
    hidden = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    spans = np.zeros((2, 2, 5), np.float32)
    spans[0, 0, 1:4] = 1
    spans[1, 0, 4] = 1  # entity 1 of each row is empty (padding)
    queries = np.asarray(entity_queries(hidden, spans))
    np.testing.assert_allclose(queries[0, 0], np.concatenate([hidden[0, 1:4].mean(0), hidden[0, 3]]))
    np.testing.assert_allclose(queries[1, 0], np.concatenate([hidden[1, 4], hidden[1, 4]]))
    assert not queries[:, 1].any()


def test_proposals_over_uniform_features_score_like_the_cells_there():
    cfg = GroundingConfig(query_size=4, vision_size=6, size=16)
    head = GroundingHead(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(1, 4, 4, 6)).astype(np.float32)
    grid[0, :3, :3] = grid[0, 1, 1]  # a 3x3 patch of one feature
    proposals = np.array([[[0.05, 0.05, 0.7, 0.7], [0.6, 0.6, 1.0, 1.0]]], np.float32)
    run = nnx.jit(lambda head, *args: head(*args))
    out = run(head, jnp.asarray(rng.normal(size=(1, 3, 8)), jnp.float32), jnp.asarray(grid), proposals,
              np.array([[True, False]]))
    assert out.logits.shape == (1, 3, 16 + 2 + 1) and out.boxes.shape == (1, 18, 4)
    np.testing.assert_allclose(out.logits[0, :, 16], out.logits[0, :, 5], rtol=1e-5)  # proposal 0 = cell (1, 1)
    assert (np.asarray(out.logits[0, :, 17]) < -1e8).all()  # padding proposal never chosen
    np.testing.assert_allclose(out.boxes[0, 16:], proposals[0])
    cells_off = GroundingHead(GroundingConfig(query_size=4, vision_size=6, size=16, cells=False), rngs=nnx.Rngs(0))
    assert run(cells_off, jnp.ones((1, 3, 8)), jnp.asarray(grid), proposals, np.ones((1, 2), bool)).logits.shape \
        == (1, 3, 3)
    with pytest.raises(ValueError, match="no candidates"):
        cells_off(jnp.ones((1, 3, 8)), jnp.asarray(grid))


def toy_batch(rng, identities, batch=16, side=4, width=12):
    """Images of one or two objects: the cell at an object's centre holds its identity (a random vector)
    and its box (offsets from the cell, size); every other cell noise. Entities: the objects, and one
    identity that is not in the image. Queries are the identities."""
    grid = rng.normal(scale=0.3, size=(batch, side, side, width)).astype(np.float32)
    queries = np.zeros((batch, 3, 2 * (width - 4)), np.float32)
    gold = np.zeros((batch, 3, 1, 4), np.float32)
    gold_mask = np.zeros((batch, 3, 1), bool)
    for n in range(batch):
        chosen = rng.choice(len(identities), 3, replace=False)
        cells = rng.choice(side * side, 2, replace=False)
        for e in range(3):
            queries[n, e, : width - 4] = identities[chosen[e]]
            if e < 1 + (n % 2):  # in the image
                row, column = divmod(int(cells[e]), side)
                size = rng.uniform(0.15, 0.45, 2)
                centre = (np.array([column, row]) + rng.uniform(0.1, 0.9, 2)) / side
                box = np.clip(np.concatenate([centre - size / 2, centre + size / 2]), 0, 1)
                grid[n, row, column, : width - 4] = identities[chosen[e]]
                grid[n, row, column, width - 4:] = np.concatenate([(centre * side) % 1, size])
                gold[n, e, 0], gold_mask[n, e, 0] = box, True
    return grid, queries, gold, gold_mask


def detector_boxes(rng, gold, gold_mask, count=4):
    """Proposals as a detector gives them: every object's box, and random boxes up to `count`, shuffled."""
    proposals = np.zeros((len(gold), count, 4), np.float32)
    for n in range(len(gold)):
        boxes = [gold[n, e, 0] for e in range(gold.shape[1]) if gold_mask[n, e, 0]]
        boxes += list(random_boxes(rng, count - len(boxes)))
        proposals[n] = np.array(boxes)[rng.permutation(count)]
    return proposals, np.ones(proposals.shape[:2], bool)


@pytest.mark.parametrize("cells", [True, False], ids=["cells", "proposals"])
def test_head_learns_to_ground_a_toy_problem(cells):
    """With the grid cells as candidates (boxes learned), or with proposals only (RoIAlign features)."""
    rng = np.random.default_rng(0)
    identities = rng.normal(size=(10, 8)).astype(np.float32)
    cfg = GroundingConfig(query_size=8, vision_size=12, size=32, cells=cells)
    head = GroundingHead(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(head)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    def inputs(generator, batch=16):
        grid, queries, gold, gold_mask = toy_batch(generator, identities, batch)
        proposals = () if cells else detector_boxes(generator, gold, gold_mask)
        return tuple(map(jnp.asarray, (grid, queries, gold, gold_mask, *proposals)))

    def loss_fn(params, grid, queries, gold, gold_mask, *proposals):
        out = nnx.merge(graphdef, params)(queries, grid, *proposals)
        sums = grounding_losses(out, gold, gold_mask, jnp.ones(gold.shape[:2]), grid.shape[1:3], cells=cells)
        return sums.kl / sums.entities + (5 * sums.l1 + 2 * sums.giou) / jnp.maximum(sums.boxes, 1)

    @jax.jit
    def step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def accuracy(params, batch):
        grid, queries, gold, gold_mask, *proposals = batch
        choice = choose(nnx.merge(graphdef, params)(queries, grid, *proposals))
        overlap = np.asarray(box_ops.iou(choice.box, gold[:, :, 0]))
        in_image = np.asarray(gold_mask[..., 0])
        right = np.where(in_image, np.asarray(choice.in_image) & (overlap > 0.5), ~np.asarray(choice.in_image))
        return right.mean()

    held_out = inputs(np.random.default_rng(99), batch=64)
    before = accuracy(params, held_out)
    for _ in range(300):
        params, opt_state, loss = step(params, opt_state, *inputs(rng))
    after = accuracy(params, held_out)
    assert after > 0.9 and after > before + 0.3, (before, after)
