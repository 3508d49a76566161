"""The worked example of docs/writing_a_scheme.md: DiLoCo whose outer step is clipped to a trust region."""
