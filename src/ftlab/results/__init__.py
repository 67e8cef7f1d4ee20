"""The results store: every number of a study in one SQLite file, indexed from the run directories' artefacts.

    store.py   the schema, writes and reads        index.py   run directories -> store rows
    rows.py    Study, Row: what readers get          load.py    store tables -> Study (derived numbers computed once)
"""
