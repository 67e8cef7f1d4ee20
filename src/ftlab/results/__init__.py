"""The results store: every number of a study in one SQLite file, indexed from the run directories' artefacts.

    records.py  the tables: one dataclass per table, its fields the columns   store.py  SQLite writes and reads
    index.py    run directories -> records                                     study.py  the store -> a Study
"""
