"""Running one job: its command line (one-line errors, --help), run folder, resume, signals and ranks."""
