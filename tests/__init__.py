"""The tests. The test doubles and probes they share with the benchmarks live in benchmarks/
(``benchmarks.fake_anthropic``, ``benchmarks.tiny_factory``, ``benchmarks.query_probes``): the
benchmarks import nothing from here. Not installed: pyproject.toml's package discovery takes
flows, tasks and models only."""
