"""The applications built on the smolvla library: the `smolvla` command and what it runs (quickstart,
benchmarks, deployment). The library (everything else under `smolvla`) never imports from here."""
