# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   create .venv, install with the pinned constraints, run the factory on built-in data
#   make test   same set-up, run the tests
PYTHON ?= python3
VENV ?= .venv
# Set TORCH_INDEX=https://download.pytorch.org/whl/cpu where no CPU torch wheel is on hand locally.
TORCH_INDEX ?=
PIP = $(VENV)/bin/python -m pip
STAMP = $(VENV)/.installed

.PHONY: demo test bench experiment fidelity weights reliability gpu-wheels gpu-check-wheels gpu-data gpu-size clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[test,dask]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tailforge demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.bench_ingest
	$(VENV)/bin/python -m benchmarks.bench_plan --llm

# the paper's experiment on nih1000 and the phantom (5 seeds), and the factory's throughput (hours on 2 cores)
experiment: $(STAMP)
	$(VENV)/bin/python -m benchmarks.experiment

# re-train the shipped normal-X-ray generators (weights/normal_dit_{64,128}.*) on ../shared/data/normals (about 80 min)
weights: $(STAMP)
	$(VENV)/bin/python -m benchmarks.train_normal_dit --source real --size 64 --steps 3000 --ship
	$(VENV)/bin/python -m benchmarks.train_normal_dit --source real --size 128 --steps 2000 --ship

# sample fidelity on phantom ground truth at 64 and 128 px (about an hour on 2 cores, with training)
fidelity: $(STAMP)
	$(VENV)/bin/python -m benchmarks.fidelity

# kill -9 and resume, hostile inputs, the query fence, LLM faults, concurrent writers, a killed gpu slot
# holder on a real Prefect server (about 5 minutes on 2 cores; --no-prefect skips the server)
reliability: $(STAMP)
	$(VENV)/bin/python -m benchmarks.reliability

# wheels a lent GPU machine lacks (it has torch, timm's needs, pyarrow, numpy) for benchmarks/gpu_check.py and
# benchmarks/experiment.py: the models' diffusers and grad-cam, and what tasks/ imports (the knowledge step's DuckDB
# cache, the anthropic SDK). They travel in .whl, about 40 MB (docs/operations.md, "Where the models compute");
# grad-cam ships no wheel, so it is built here
WHEEL_TARGET = --only-binary=:all: --python-version 3.12 --implementation cp --platform any \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
gpu-wheels:
	rm -rf .whl && mkdir .whl
	$(PYTHON) -m pip download -q --no-deps $(WHEEL_TARGET) -c constraints.txt -d .whl \
		diffusers timm ttach importlib_metadata
	$(PYTHON) -m pip download -q --no-deps $(WHEEL_TARGET) -c constraints.txt -d .whl \
		duckdb pytz anthropic annotated-types docstring_parser httpcore2 httpx2 jiter opentelemetry-api pydantic \
		pydantic_core sniffio truststore typing-inspection typing_extensions
	$(PYTHON) -m pip wheel -q --no-deps -c constraints.txt -w .whl grad-cam

# the wheels benchmarks/gpu_check.py and gpu_generator.py alone need (no DuckDB, anthropic or grad-cam; timm
# and typing_extensions are on the lent machine): the whole set does not fit beside the tree in one 64 MiB
# carry; `make gpu-size` says whether what would travel fits
gpu-check-wheels:
	rm -rf .whl && mkdir .whl
	$(PYTHON) -m pip download -q --no-deps $(WHEEL_TARGET) -c constraints.txt -d .whl \
		diffusers importlib_metadata pydantic pydantic_core annotated-types typing-inspection

# the normals and nih1000 films benchmarks/gpu_generator.py trains and scores with, packed into .gpu-data
# to fit what is left of the carry (run after gpu-check-wheels)
gpu-data: $(STAMP)
	$(VENV)/bin/python -m benchmarks.gpu_generator pack --out .gpu-data
gpu-size:
	@$(PYTHON) -m benchmarks.gpu_carry

clean:
	rm -rf $(VENV) .tailforge
