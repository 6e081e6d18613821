"""Brook's command-line tool (``brook``)."""
