"""The lowest layer: what streamlib knows of a model family (:mod:`.arch`), rotary rotations, argument checks,
the costs of a stream from the shapes alone, the intervals every number carries, and how tables are written. Imports
nothing of the package above it."""
