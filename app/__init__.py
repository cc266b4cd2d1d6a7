"""The application, in rooms that import only downward (the contracts in .importlinter, checked in CI):

    cli/       the command line: main, the parser, one thin module per command
    bench/     one module per benchmark
    compose/   AppConfig from config.yaml, and the one factory (rigs, cameras, policies, store specs)
    runtime/   the control loops, the policy runner, the loop's events      ┐ independent of each other,
    serving/   wire, policy server and client (no torch)                     │ except that viz reads the
    viz/       the Rerun logger and the PNG plots                            │ loop's events
    interop/   the Hugging Face Hub, the isolated LeRobot environment       ┘
    errors.py  UserError: one sentence for the operator, raised in any room

The only layer that reads config files, environment variables and arguments (docs/architecture.md).
"""
