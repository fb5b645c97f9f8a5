"""streamlib: streaming LLM inference with attention sinks (StreamingLLM) on Pythia, as a workbook."""

import warnings

# Notebooks run without ipywidgets: tqdm's text bars are what we want, not a warning about widgets.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
