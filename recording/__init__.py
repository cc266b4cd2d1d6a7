"""The episode store (Zarr v3) and the recorder that turns a live loop into episodes.

The store modules import only numpy, zarr and codecs, so a training box can read datasets without the
hardware stack; only the recorder touches drivers/.
"""
