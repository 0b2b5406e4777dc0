"""Reader-study statistics (MRMC ROC analysis, agreement, reading time).

Plain numpy/scipy/statsmodels: no Django import, so it runs in a notebook and from the CLI.
"""
