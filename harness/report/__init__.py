"""Run reports: per-case JSON records -> a Markdown summary (CI step summary) and a run JSON."""
