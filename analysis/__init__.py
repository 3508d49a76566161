"""Analysis of run directories: plots, tables, the network model."""
