"""One module per `xr0` command: `add_arguments(parser)` and `run(args, config) -> int`."""
