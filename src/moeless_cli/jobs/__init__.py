"""jobs: one per pipeline stage, a typed Request in and a typed Result out; the CLI commands and bench call them"""
