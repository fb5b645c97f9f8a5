"""The command line: ``python -m streamlib run|generate|download|profiles`` and the notebook chain it runs."""
