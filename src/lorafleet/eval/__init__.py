"""Evaluation of a served model on a held-out set: cases → requests → scores → report (see runner.evaluate)."""
