"""Evaluation: TL / WL / ALL precision, recall and F1 counted by one jitted function, and reports.

    from oie_jax.eval.metrics import score          # gold records + output strings -> Scores
    from oie_jax.eval.evaluate import evaluate      # model + records -> (outputs, Scores)
    scores.metric("macro/all/f1")                    # any value by name; scores.metrics() lists them

Definitions: docs/metrics.md. Modules: encode (strings -> arrays), metrics (jitted counting, Scores),
predictions (prediction files, pairing by id), report (text, Markdown, JSON, plot), evaluate
(generation + scoring), score_cli (the `score`, `eval` and `extract` commands).
"""

# The metric the training loop selects the best checkpoint by unless its config names another. Here,
# not in metrics.py, so that building the CLI parser does not import JAX.
DEFAULT_METRIC = "macro/all/f1"
