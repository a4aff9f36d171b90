"""moeless inside serving engines: policies that engines call at run time (vLLM's EPLB policy).

Engine file formats (reading their load records, writing their maps) live in `moeless_cli.interop`.
Nothing here imports an engine at module import time: the engine need not be installed.
"""
