"""`moeless bench`'s parts; the job itself is `jobs/bench.py` (BenchRequest -> run_bench -> BenchResult).

Modules: pipeline (the stages through the profile, predictor and plan jobs, cached in the out dir),
compare (the systems on the simulated cluster), real (the systems through serve's runtime),
outputs (markdown, plots, the table rows).
"""
