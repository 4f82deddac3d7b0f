"""Scoring, post-processing, evaluation and prediction with a trained run."""
