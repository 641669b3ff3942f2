"""The reliability trials (benchmarks/reliability*.py: kill -9 and resume, a hostile ingest
corpus, corruption at rest, two writers, an S3 outage, a killed `gpu` slot holder, a Prefect
server lost mid-run) as tests: each section at small sizes, in its own process under its time
limit, must lose nothing, duplicate nothing, crash, hang or leak nothing.

Marked slow (minutes each; the whole set about half an hour on 2 cores): not part of `make
test`. Run them on demand with ``pytest -m slow tests/test_reliability.py`` (``-k integrity``
for one section); `make reliability` runs the full-size suite and writes its report.
"""

import pytest

from benchmarks.reliability import SECTION_LIMIT_S, parse, run_section
from benchmarks.reliability_sections import COUNTS

SMALL = ["--n", "120", "--kills", "5", "--concurrent", "2", "--augment-n", "400", "--augment-images", "12",
         "--augment-kills", "6", "--outages", "2", "--flips", "12", "--lease-hold", "40"]
BAD = [count for count in COUNTS if count not in ("trials", "survived")]


@pytest.mark.slow
@pytest.mark.parametrize("section", list(SECTION_LIMIT_S))
def test_a_reliability_section_loses_nothing(section, tmp_path):
    result = run_section(section, parse(SMALL), tmp_path / section)
    assert result["trials"] > 0, result
    assert {count: result[count] for count in BAD} == dict.fromkeys(BAD, 0), result
