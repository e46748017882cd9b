"""The grounding run, a peer of the text run (`train/loop.py`) in the table of run kinds (`train/runs.py`):
`parts.py` holds what it trains and how (the LLaMA, the vision encoder and the head as parts, frozen or
trained; the losses and steps), `run.py` the run over them."""
