"""What is measured: quality (token NLL, perplexity), timing, memory, FLOPs, attention, pass-key retrieval,
StreamEval and recall across chat turns, each as a :class:`.measurement.Measurement` a run records."""
