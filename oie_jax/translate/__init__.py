"""LLM-assisted dataset translation (`oie-jax translate`): rule-based label tables (`labels`), one
request per record with a one-shot example (`prompt`), answers cached in SQLite (`cache`) from an
OpenAI-compatible endpoint or an in-process model (`backends`), filters with reason codes
(`filters`), a review file for manual calibration (`calibration`), release-format files and a loss
report (`run`, `report`)."""
