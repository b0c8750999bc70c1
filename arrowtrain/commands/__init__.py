"""User commands: one module per `arrowtrain` command (`main(argv, prog=...)`)."""
