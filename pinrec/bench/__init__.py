"""`pinrec bench ...`: benchmarks that report a ratio to a reference measured in the same run."""
