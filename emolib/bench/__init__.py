"""Benchmarks; ``python -m emolib.bench`` runs them (``emolib/bench/__main__.py``). Each benchmark module imports
only ``emolib.bench.common``, never another benchmark."""
