"""Real sources added to the built-in ones (tasks/sources.py), one module each. A module here
registers its reader, and nothing else names it::

    from tasks.sources import READERS, Source, SourceTable

    def read_listing(table: str, vocab: str = "nih") -> SourceTable: ...

    READERS.register("listing")(Source(read_listing, ("vocab",), "a listing CSV"))

``dataset.source: listing`` and ``tailforge ingest listing TABLE IMAGES --vocab ...`` then read
it; each option it names is a ``dataset:`` setting (a new option is also a DatasetSettings field).
"""
