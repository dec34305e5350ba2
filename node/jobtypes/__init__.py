"""Job types (after Racetrack): plugins (``plugins.py``), the ``[jobtypes]`` section (``config.py``) and the
builder that turns a job's source into an image (``builder.py``). haddock ships two plugins as package data
under ``plugins/``: ``golang`` and ``python3``."""
