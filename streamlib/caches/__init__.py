"""The caches that plug into transformers: the one interface the loops use (:mod:`.base`), the layers and their
parts (slots, sinks, quantized storage), the ring of StreamingLLM, burst eviction, score-based eviction, Recompute, the
attention hand-over, compiled decoding, and the loops that feed a stream (:mod:`.generation`). Knows no policy:
each policy (:mod:`streamlib.policies`) builds its cache from these parts."""
