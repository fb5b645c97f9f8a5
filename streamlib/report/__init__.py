"""The report: tables built from a run's records, like for like and with their intervals (:mod:`.compare`,
:mod:`.tables`, :mod:`.tasks`), the figures (:mod:`.figures`, drawn in the style of :mod:`.style`), and the page they
go on (:mod:`.page`: ``report.md`` and ``report.html``). A notebook imports this package once and calls
``report.sweep_table(run)``, ``report.write_report(run, tables)`` and so on."""

from ..core.format import format_interval, in_display_units, to_latex, to_markdown
from .compare import (CI, INTERVALS_NOTE, LIKE_FOR_LIKE, comparison, comparison_table, describe_setting, latest_of_each,
                      nll_curves, paired_interval, ppl_interval, published_results, stretch_table)
from .page import CAPTIONS, render_html, write_report
from .sections import RUN_FIGURES, draw, report_tables
from .tables import (LAB_CLAIMS, bits_report, bits_table, burst_speed_table, burst_table, decode_modes_table,
                     latency_table, speed_table, sweep_report, sweep_table)
from .tasks import (beyond_window_table, harness_grid, latest_curves, recall_table, recall_turns, retrieval_summary, retrieval_table, retrieval_trials,
                    streameval_questions, streameval_table)

__all__ = ["beyond_window_table", "harness_grid", "RUN_FIGURES", "draw", "report_tables", "CAPTIONS", "CI", "INTERVALS_NOTE", "LAB_CLAIMS", "LIKE_FOR_LIKE", "bits_report", "bits_table",
           "burst_speed_table", "burst_table", "comparison", "comparison_table", "decode_modes_table",
           "describe_setting", "format_interval", "in_display_units", "latency_table", "latest_curves",
           "latest_of_each", "nll_curves", "paired_interval", "ppl_interval", "published_results", "recall_table",
           "recall_turns", "render_html", "retrieval_summary", "retrieval_table", "retrieval_trials", "speed_table",
           "stretch_table", "streameval_questions", "streameval_table", "sweep_report", "sweep_table",
           "to_latex", "to_markdown", "write_report"]
