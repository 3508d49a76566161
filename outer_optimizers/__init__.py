"""Outer synchronization schemes across the replica axis (one file per scheme); sync DP lives in jaximus.step for now."""
