"""Evaluation harness: the seeds' metrics on any EmpatheticDialogues-format file."""
