"""Labelling new data with an LLM oracle, only after its prompt passes calibration.

- `oracles`: the oracle (an OpenAI-compatible endpoint, or a local model) and asking it about items;
- `corpus`: the JSON Lines corpus of items to label;
- `prompts`: a family's versioned prompt template, and parsing answers into records;
- `calibration`: `pulse calibrate` (and `--validate`): PASS / REVIEW / FAIL with reasons;
- `labelling`: `pulse label`: resumable, capped batch labelling into annotations (`source: oracle`).
"""
