"""`moeless bench`: the whole pipeline (profile -> train-predictor -> plan) and every system side by side.

Modules: pipeline (stages, cached in the out dir), compare (runs the systems), outputs (markdown,
plots, the table rows).
"""
