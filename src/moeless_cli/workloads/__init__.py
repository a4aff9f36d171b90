"""Workloads: prompt datasets (what requests say) and arrival traces (when they come, how long they are)."""
