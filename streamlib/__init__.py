"""streamlib: streaming LLM inference with attention sinks (StreamingLLM) on Pythia, as a workbook."""

__version__ = "0.1.0"
