"""The application: CLI, config loading, composition of concrete objects, control loops, Rerun views,
benchmarks. The only layer that reads config files, environment variables and arguments."""
