"""Side-by-side benchmark of aol, PgQueuer and Procrastinate: `python -m bench --help`."""
