"""`python -m pulse_pipeline.cli`: the `pulse` command."""

from pulse_pipeline.cli import main

main()
