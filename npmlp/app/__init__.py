"""The application: the `npmlp` command (cli.py) and what it is made of: the options and their
checks, the run directory, checkpoints, figures, diagnostics, the lr finder, the progress bar,
atomic files and the run lock, the model registry, and the errors a user sees."""
