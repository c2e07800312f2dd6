"""`python -m artifix ...` (also the entry point for `torchrun ... -m artifix`)."""

from .cli.entry import main

main()
