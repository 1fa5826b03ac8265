"""`python -m smolvla.train ...` (and `torchrun --nproc_per_node=N -m smolvla.train ...`)."""

from smolvla.train.loop import main

main()
