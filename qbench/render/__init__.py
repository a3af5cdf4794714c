"""Output: escaping for every format, tables that fit a terminal, figures."""
