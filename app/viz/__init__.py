"""What the operator sees: the Rerun logger and blueprint (`logger`, configured by `VizConfig`) and the PNG
plots (`plots`). Reads the loop's events (app/runtime/events.py) and nothing else of the runtime.
"""
