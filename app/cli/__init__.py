"""The command line: `main` (the command table), the shared parser, and one thin module per command in
`commands/` (parse → compose → run). Commands never import each other; steps two commands share live here
(`recording`, `evaluation`, `lerobot`). The top room: nothing imports it.
"""
