"""Composition: the config tree (`AppConfig`, built strictly from config.yaml) and the one factory that turns
it into objects (rigs, cameras, policies, store specs). Imports runtime, serving, viz and interop; only the
commands and the benchmarks import it.
"""
