"""A run: its configuration (a profile and the notebook's parameters), its records, and the grids the notebooks
measure, defined once for the notebook and the report."""
