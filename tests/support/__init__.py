"""What the tests make to run on, kept out of the shipped packages: random-weight checkpoints in the
seed experts' upstream layouts, files carrying provenance. The measurement scripts in
benchmarks/scripts/ use them too (they run from a checkout)."""
