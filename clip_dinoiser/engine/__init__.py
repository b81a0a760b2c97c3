"""What the tools run, by concern: ``job`` (a job's command line, run folder, resume, signals and
ranks), ``evaluation``, ``reporting`` and ``training``. Imports go one way, ``training ->
reporting -> evaluation -> job``: a sub-package imports its own modules and those to its right,
never to its left (``tests/test_layout.py`` checks it)."""
