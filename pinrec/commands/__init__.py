"""The `pinrec` subcommands, one module per job. Each module's `register(subparsers)` adds its parsers and
sets a handler `handler(args, settings) -> exit code` on each. Runtime commands (`serve`, `consume`) import
their libraries inside the handler; development tooling (local stack, demo, benchmarks) likewise, so the
image's commands never load it."""
