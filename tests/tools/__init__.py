"""The tests' own instruments, run by hand: ``mutate.py`` (mutation testing of the numeric core,
docs/mutation.md) and ``check_floors.py`` (every dependency at its floor, docs/dependencies.md)."""
