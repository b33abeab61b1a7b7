# sessionkit: every developer and CI task is one target here.
VENV ?= .venv
PY := $(VENV)/bin/python
PROTO_SRC := $(wildcard protos/sessionkit/v1/*.proto)
export HF_HUB_OFFLINE := 1

.PHONY: install protos run test lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# A virtualenv at .venv with the project (editable), its dev tools and generated stubs.
install: $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(MAKE) protos

# Python stubs (+ .pyi) for protos/ into the sessionkit package (sessionkit.v1).
protos:
	$(PY) -m grpc_tools.protoc -Iprotos \
		-I$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
		--python_out=sdk --pyi_out=sdk --grpc_python_out=sdk $(PROTO_SRC)

# Every service in one process on 127.0.0.1:50051, data under ./.sessionkit.
run: install
	$(VENV)/bin/sessionkit serve

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/state_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache sdk/sessionkit/v1/*_pb2*.py sdk/sessionkit/v1/*_pb2*.pyi
