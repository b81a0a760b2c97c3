"""Scoring models: sliding windows, the evaluator and its metric, sweeps, results and saved predictions."""
