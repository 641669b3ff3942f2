"""The tests, and the test doubles the benchmarks share with them (``tests.fake_anthropic``, the
query-fence probes of ``tests.test_query_fence``): import them as ``tests.X`` from the checkout's
root. Not installed: pyproject.toml's package discovery takes flows, tasks and models only."""
