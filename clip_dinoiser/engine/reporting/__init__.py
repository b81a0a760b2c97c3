"""Showing results: summaries of run folders, their plots, and the demo's and the app's figures."""
