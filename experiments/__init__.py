"""Experiments: each folder holds config.py, model.py, optimizer.py."""
