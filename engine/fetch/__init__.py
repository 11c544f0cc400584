"""Fetching whole slides from object stores into a folder the tiler reads.

    python -m engine.fetch seed --out slides/            # the study's 40 slides
    python -m engine.fetch --manifest FILE --out slides/ # a list of your own (CSV or YAML)

Modules: manifest (what to fetch, and the record of what was fetched), sources.idc (Imaging Data
Commons slides to their DICOM series), download (one object: resumed, verified, set aside when
corrupt), slides (a manifest's slides in parallel, whole or not at all, and the summary), cli.
"""
